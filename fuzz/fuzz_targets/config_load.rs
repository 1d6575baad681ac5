//! The configuration loader (`gerbang::config::load_with`) on fuzzed TOML text.
//!
//! Input: up to three texts separated by lines `%%`: the registry file of one agency (it
//! replaces `registry/dukcapil.toml` of the demo configuration, through the loader's overlay),
//! its agreements file (replacing `agreements/dukcapil.toml`), and optionally the main file
//! (written next to the demo's `gerbang.toml`, so relative paths resolve the same way).
//!
//! Invariants: the loader never panics; it returns a configuration, or an error listing at
//! least one problem, each with a message.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gerbang::config::{create_signing_key, ensure_audit_keys, load_with, Overlay, Overrides};
use libfuzzer_sys::fuzz_target;

const MAIN: &str = r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
system_roots = false
[paths]
registry_dir = "registry"
agreements_dir = "agreements"
data_dir = "data"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for sub in ["registry", "agreements"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            for e in std::fs::read_dir(demo.join(sub)).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, root.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::write(root.join("gerbang.toml"), MAIN).unwrap();
        create_signing_key(&root.join("data/keys")).unwrap();
        ensure_audit_keys(&root.join("data/keys")).unwrap();
        Fixture { _dir: dir, root }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let mut parts = text.split("\n%%\n");
    let mut overlay = Overlay::new();
    if let Some(registry) = parts.next() {
        overlay.insert(
            f.root.join("registry/dukcapil.toml"),
            Some(registry.to_owned()),
        );
    }
    if let Some(agreements) = parts.next() {
        overlay.insert(
            f.root.join("agreements/dukcapil.toml"),
            Some(agreements.to_owned()),
        );
    }
    let main = match parts.next() {
        Some(main) => {
            let p = f.root.join("fuzzed.toml");
            std::fs::write(&p, main).unwrap();
            p
        }
        None => f.root.join("gerbang.toml"),
    };
    match load_with(&main, &Overrides::default(), &overlay) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            for p in &e.problems {
                assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
            }
        }
    }
});
