//! Times as the console shows them: Western Indonesian Time (UTC+7), `2026-12-02 10:15 WIB`.

use std::time::{SystemTime, UNIX_EPOCH};

use gerbang_policy::limits::{civil_from_days, days_from_civil};

/// WIB is UTC+7 all year.
const WIB: i64 = 7 * 3600;

/// Unix seconds as `YYYY-MM-DD HH:MM WIB`.
pub fn wib_of_secs(secs: i64) -> String {
    let t = secs + WIB;
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} WIB",
        s / 3600,
        s % 3600 / 60
    )
}

/// A time as `YYYY-MM-DD HH:MM WIB`.
pub fn wib(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    wib_of_secs(secs)
}

/// An RFC 3339 time (`2026-12-02T03:15:00.123Z`, `2030-12-31T23:59:59+07:00`) in WIB; the
/// text itself when it does not parse.
pub fn wib_of_text(text: &str) -> String {
    parse_rfc3339(text).map_or_else(|| text.to_owned(), wib_of_secs)
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, rest) = text.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, dd) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let h = num(rest.get(0..2)?)?;
    let mi = num(rest.get(3..5)?)?;
    let se = num(rest.get(6..8)?)?;
    let zone = rest
        .get(8..)?
        .trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "z" | "" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let z = z.get(1..)?;
            sign * (num(z.get(0..2)?)? * 3600 + num(z.get(3..5)?)? * 60)
        }
    };
    Some(days_from_civil(y, m, dd) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Midnight WIB of date `YYYY-MM-DD` plus `days`, as RFC 3339 UTC (the audit query's form).
pub fn wib_day_start(date: &str, days: i64) -> Option<String> {
    let num = |s: &str| s.parse::<i64>().ok();
    let mut d = date.split('-');
    let (y, m, dd) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
        return None;
    }
    let secs = (days_from_civil(y, m, dd) + days) * 86_400 - WIB;
    let (yy, mm, ddd) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    Some(format!(
        "{yy:04}-{mm:02}-{ddd:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wib_times() {
        assert_eq!(
            wib_of_text("2026-12-02T03:15:00.123Z"),
            "2026-12-02 10:15 WIB"
        );
        assert_eq!(
            wib_of_text("2030-12-31T23:59:59+07:00"),
            "2030-12-31 23:59 WIB"
        );
        assert_eq!(wib_of_text("2026-12-01T20:00:00Z"), "2026-12-02 03:00 WIB");
        assert_eq!(wib_of_text("nonsense"), "nonsense");
        assert_eq!(
            wib_day_start("2026-12-02", 0).as_deref(),
            Some("2026-12-01T17:00:00Z")
        );
        assert_eq!(
            wib_day_start("2026-12-02", 1).as_deref(),
            Some("2026-12-02T17:00:00Z")
        );
    }
}
