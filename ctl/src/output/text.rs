//! Go's formatting of the values etcdctl prints: `%q` strings, base64 bytes in JSON, `--hex`
//! escapes, `time.Duration` and go-humanize sizes. Matching these is what makes output identical.

use std::fmt::Write;
use std::time::Duration;

/// Go's `strconv.Quote` of the bytes as a string: printable UTF-8 stays, invalid bytes become
/// `\xNN`, control characters get their short or `\u` escapes.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if is_go_printable(c) => out.push(c),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: everything but control, format and separator
/// code points other than the ASCII space.
fn is_go_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !(c.is_control()
        || c == '\u{00ad}'
        || ('\u{2000}'..='\u{200f}').contains(&c)
        || ('\u{2028}'..='\u{202f}').contains(&c)
        || ('\u{205f}'..='\u{206f}').contains(&c)
        || c == '\u{3000}'
        || c == '\u{feff}'
        || ('\u{fff9}'..='\u{fffb}').contains(&c))
}

/// Standard padded base64, as Go's encoding/json writes `[]byte`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let word = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(ALPHABET[(word >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// etcdctl's `--hex` form: every byte as `\xNN`.
pub fn hex_escaped(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "\\x{b:02x}");
        out
    })
}

/// Go's `time.Duration.String()`: "1.798899ms", "2.5s", "1m30s".
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", decimal(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = decimal(nanos % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `value / unit` with the fraction's trailing zeros trimmed, as Go prints durations.
fn decimal(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let fraction = value % unit;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = unit.ilog10() as usize;
    let text = format!("{fraction:0digits$}");
    format!("{whole}.{}", text.trim_end_matches('0'))
}

/// go-humanize's `Bytes`: SI units with one decimal under 10 ("20 kB", "1.2 MB").
pub fn humanize_bytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let exponent = ((size as f64).ln() / 1000f64.ln()).floor() as usize;
    let value = (size as f64 / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// Go's `%x` of a signed integer: a minus sign, not two's complement.
pub fn signed_hex(value: i64, width: usize) -> String {
    if value < 0 {
        format!("-{:0width$x}", value.unsigned_abs())
    } else {
        format!("{value:0width$x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote(b"foo"), "\"foo\"");
        assert_eq!(go_quote(b"a\"b\n\x00"), r#""a\"b\n\x00""#);
        assert_eq!(go_quote(b"k8s\x00\xff"), "\"k8s\\x00\\xff\"");
        assert_eq!(go_quote("é".as_bytes()), "\"é\"");
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foo2"), "Zm9vMg==");
        assert_eq!(base64(b"z2"), "ejI=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_nanos(1_798_899)), "1.798899ms");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
    }

    #[test]
    fn sizes_print_like_humanize() {
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(25_000), "25 kB");
        assert_eq!(humanize_bytes(1_234_567), "1.2 MB");
        assert_eq!(humanize_bytes(5), "5 B");
    }
}
