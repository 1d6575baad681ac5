//! The console's words: Bahasa Indonesia by default, English as a switch (cookie `lang`).

use std::collections::BTreeMap;

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Id,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Id => "id",
            Lang::En => "en",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "id" => Some(Lang::Id),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The words of this language, by key (the templates' `t.<key>`).
    pub fn words(self) -> BTreeMap<&'static str, &'static str> {
        WORDS
            .iter()
            .map(|(k, id, en)| (*k, if self == Lang::Id { *id } else { *en }))
            .collect()
    }
}

/// Key, Indonesian, English.
const WORDS: &[(&str, &str, &str)] = &[
    ("console", "Konsol Gerbang", "Gerbang console"),
    ("skip", "Lompat ke isi", "Skip to content"),
    ("nav_label", "Menu utama", "Main menu"),
    ("overview", "Ringkasan", "Overview"),
    ("services", "Layanan", "Services"),
    ("applications", "Aplikasi", "Applications"),
    ("agreements", "Perjanjian", "Agreements"),
    ("explain", "Uji akses", "Access test"),
    ("audit", "Audit", "Audit"),
    ("history", "Riwayat", "History"),
    ("signed_in_as", "Masuk sebagai", "Signed in as"),
    ("role", "Peran", "Role"),
    ("sign_out", "Keluar", "Sign out"),
    ("sign_in", "Masuk", "Sign in"),
    ("sign_in_title", "Masuk ke Konsol Gerbang", "Sign in to the Gerbang console"),
    ("token", "Token admin", "Admin token"),
    ("bad_token", "Token tidak dikenal.", "Unknown token."),
    ("too_many", "Terlalu banyak percobaan masuk yang gagal. Coba lagi dalam satu menit.", "Too many failed sign-ins. Try again in a minute."),
    ("language", "Bahasa", "Language"),
    ("traffic", "Lalu lintas (konsumen × layanan)", "Traffic (consumer × service)"),
    ("since", "sejak", "since"),
    ("consumer_agency", "Instansi konsumen", "Consumer agency"),
    ("service", "Layanan", "Service"),
    ("calls", "Panggilan", "Calls"),
    ("denials", "Penolakan menurut alasan", "Denials by reason"),
    ("reason", "Alasan", "Reason"),
    ("count", "Jumlah", "Count"),
    ("health", "Kesehatan instans", "Instance health"),
    ("instance", "Instans", "Instance"),
    ("state", "Keadaan", "State"),
    ("config", "Konfigurasi", "Configuration"),
    ("config_hash", "Hash konfigurasi", "Configuration hash"),
    ("last_reload", "Muat ulang terakhir", "Last reload"),
    ("reload", "Muat ulang konfigurasi", "Reload configuration"),
    ("reloaded", "Konfigurasi dimuat ulang.", "Configuration reloaded."),
    ("none", "Tidak ada.", "None."),
    ("agency", "Instansi", "Agency"),
    ("id", "Id", "Id"),
    ("name", "Nama", "Name"),
    ("instances", "Instans", "Instances"),
    ("endpoints", "Endpoint", "Endpoints"),
    ("method", "Metode", "Method"),
    ("path", "Path", "Path"),
    ("classification", "Klasifikasi", "Classification"),
    ("edit_instances", "Ubah instans (JSON)", "Edit instances (JSON)"),
    ("save", "Simpan", "Save"),
    ("preview", "Pratinjau", "Preview"),
    ("saved", "Perubahan disimpan dan berlaku.", "Change saved and in force."),
    ("auth_methods", "Metode autentikasi", "Auth methods"),
    ("api_keys", "Kunci API (kedaluwarsa)", "API keys (expiry)"),
    ("rotate", "Ganti client secret", "Rotate client secret"),
    ("new_secret", "Client secret baru", "New client secret"),
    ("shown_once", "Ditampilkan sekali ini saja: hanya hash-nya yang disimpan. Salin sekarang.", "Shown this once only: only its hash is stored. Copy it now."),
    ("title", "Judul", "Title"),
    ("legal_basis", "Dasar hukum", "Legal basis"),
    ("consumers", "Konsumen", "Consumers"),
    ("methods", "Metode", "Methods"),
    ("purposes", "Tujuan", "Purposes"),
    ("valid_from", "Berlaku mulai", "Valid from"),
    ("valid_until", "Berlaku sampai", "Valid until"),
    ("status", "Status", "Status"),
    ("max_classification", "Klasifikasi tertinggi", "Highest classification"),
    ("rate_limit", "Batas laju (TOML)", "Rate limit (TOML)"),
    ("quota", "Kuota (TOML)", "Quota (TOML)"),
    ("fields", "Aturan field (TOML)", "Field rules (TOML)"),
    ("list_hint", "satu per baris", "one per line"),
    ("edit", "Ubah", "Edit"),
    ("agencies", "Instansi", "Agencies"),
    ("new", "baru", "new"),
    ("new_record", "Tambah", "Add"),
    ("edit_record", "Ubah (TOML)", "Edit (TOML)"),
    ("record_toml", "Isi dalam TOML, seperti di berkasnya", "Content as TOML, as in its file"),
    ("id_two_part", "instansi/id, mis. dukcapil/penduduk", "agency/id, e.g. dukcapil/penduduk"),
    ("id_one_part", "huruf kecil, angka dan tanda hubung", "lower-case letters, digits and dashes"),
    ("delete", "Hapus", "Delete"),
    ("confirm_delete", "Ya, hapus data ini (perubahan dicatat di log audit)", "Yes, delete this record (the change is recorded in the audit log)"),
    ("deleted", "Data dihapus.", "Record deleted."),
    ("record_conflict", "Data ini telah diubah orang lain sejak Anda membukanya. Tidak ada yang ditulis. Buka lagi untuk melihat versi terbaru, lalu ulangi perubahan Anda.", "Someone else changed this record since you opened it. Nothing was written. Open it again to see the newest version, then repeat your change."),
    ("restore", "Pulihkan revisi ini", "Restore this revision"),
    ("restored", "Revisi dipulihkan dan berlaku di setiap replika.", "Revision restored and in force on every replica."),
    ("view", "Lihat", "View"),
    ("st_aktif", "aktif", "active"),
    ("st_kedaluwarsa", "kedaluwarsa", "expired"),
    ("st_ditangguhkan", "ditangguhkan", "suspended"),
    ("st_belum", "belum berlaku", "not yet valid"),
    ("problems", "Perubahan ditolak; tidak ada yang ditulis:", "The change is refused; nothing was written:"),
    ("conflict", "Perjanjian ini telah diubah orang lain sejak Anda membukanya. Tidak ada yang ditulis. Buka lagi formulirnya untuk melihat versi terbaru, lalu ulangi perubahan Anda.", "Someone else changed this agreement since you opened it. Nothing was written. Open the form again to see the newest version, then repeat your change."),
    ("diff", "Perbedaan berkas (belum disimpan)", "File diff (not saved)"),
    ("valid_preview", "Perubahan valid. Belum ada yang ditulis; tekan Simpan untuk menerapkannya.", "The change is valid. Nothing was written yet; press Save to apply it."),
    ("consumer", "Konsumen (instansi/aplikasi)", "Consumer (agency/application)"),
    ("purpose", "Tujuan", "Purpose"),
    ("test", "Uji", "Test"),
    ("decision", "Keputusan", "Decision"),
    ("agreement", "Perjanjian", "Agreement"),
    ("endpoint", "Endpoint", "Endpoint"),
    ("considered", "Perjanjian yang ditimbang", "Agreements considered"),
    ("matched_by", "Cocok lewat", "Matched by"),
    ("result", "Hasil", "Result"),
    ("nik", "NIK", "NIK"),
    ("nik_hint", "di-hash dengan kunci subjek; tidak disimpan", "hashed with the subject key; never stored"),
    ("from", "Dari tanggal", "From date"),
    ("until", "Sampai tanggal", "Until date"),
    ("search", "Cari", "Search"),
    ("results_for", "Hasil untuk NIK", "Results for NIK"),
    ("time", "Waktu", "Time"),
    ("replica", "Replika", "Replica"),
    ("verify", "Verifikasi log audit", "Audit log verification"),
    ("no_audit", "Log audit tidak dikonfigurasi.", "The audit log is not configured."),
    (
        "verify_ok",
        "Log audit utuh: {files} berkas, {records} catatan, {seals} segel; {unsealed} catatan setelah segel terakhir.",
        "Audit log intact: {files} file(s), {records} record(s), {seals} seal(s); {unsealed} record(s) after the last seal.",
    ),
    (
        "verify_broken",
        "Log audit TIDAK utuh:",
        "Audit log NOT intact:",
    ),
    (
        "verify_no_key",
        "Log audit TIDAK diverifikasi: kunci publik segel tidak ada.",
        "Audit log NOT verified: no seal public key.",
    ),
    ("revisions", "Revisi konfigurasi", "Configuration revisions"),
    ("revision", "Revisi", "Revision"),
    ("who", "Siapa", "Who"),
    ("when", "Kapan", "When"),
    ("why", "Alasan", "Why"),
    ("action", "Tindakan", "Action"),
    ("admin_records", "Perubahan admin (log audit)", "Admin changes (audit log)"),
    ("error", "Galat", "Error"),
    ("not_found", "Halaman tidak ditemukan.", "Page not found."),
    ("forbidden", "Akses ditolak", "Access denied"),
    ("needs_role", "Peran Anda tidak mengizinkan ini; diperlukan peran", "Your role does not allow this; it needs the role"),
    ("csrf", "Formulir ini tidak membawa token CSRF yang benar (mungkin halaman sudah lama terbuka atau dikirim dari situs lain). Tidak ada yang diubah. Muat ulang halaman dan coba lagi.", "This form did not carry the right CSRF token (the page may be old or sent from another site). Nothing was changed. Reload the page and try again."),
    ("internal", "Terjadi galat internal; lihat log gateway.", "An internal error occurred; see the gateway's log."),
];
