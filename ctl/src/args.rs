//! Argument parsing with Go's strconv semantics and error texts, which etcdctl prints verbatim
//! (`strconv.ParseInt: parsing "x": invalid syntax`).

/// Go's `strconv.ParseInt(text, base, 64)`.
pub fn parse_int(text: &str, base: u32) -> Result<i64, String> {
    let error = |reason: &str| format!("strconv.ParseInt: parsing {}: {reason}", go_quoted(text));
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = parse_digits(digits, base).map_err(&error)?;
    if negative {
        if magnitude > i64::MIN.unsigned_abs() {
            return Err(error("value out of range"));
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| error("value out of range"))
    }
}

/// Go's `strconv.ParseUint(text, base, 64)`.
pub fn parse_uint(text: &str, base: u32) -> Result<u64, String> {
    parse_digits(text, base)
        .map_err(|reason| format!("strconv.ParseUint: parsing {}: {reason}", go_quoted(text)))
}

fn parse_digits(digits: &str, base: u32) -> Result<u64, &'static str> {
    if digits.is_empty() {
        return Err("invalid syntax");
    }
    let mut value: u64 = 0;
    let mut overflow = false;
    for c in digits.chars() {
        let digit = c.to_digit(base).ok_or("invalid syntax")?;
        match value
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(digit)))
        {
            Some(v) => value = v,
            None => overflow = true,
        }
    }
    if overflow {
        return Err("value out of range");
    }
    Ok(value)
}

fn go_quoted(text: &str) -> String {
    crate::output::text::go_quote(text.as_bytes())
}

/// clap value parser for Go `int64` flags, so bad values fail with pflag's wording.
pub fn go_i64(text: &str) -> Result<i64, String> {
    parse_int(text, 10)
}

/// clap value parser for Go `uint64` flags, so bad values fail with pflag's wording.
pub fn go_u64(text: &str) -> Result<u64, String> {
    parse_uint(text, 10)
}

/// The end of the range holding every key that starts with `prefix` (clientv3's
/// GetPrefixRangeEnd): the prefix with its last byte below 0xff incremented, or `\0` (all keys).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Go's `strconv.ParseBool`, for `--flag=value` on boolean flags.
pub fn go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {}: invalid syntax",
            go_quoted(text)
        )),
    }
}

/// Lets every switch also take pflag's `--flag=true|false` form, in every subcommand.
pub fn with_go_booleans(command: clap::Command) -> clap::Command {
    use clap::ArgAction;
    command
        .mut_args(|arg| {
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                arg.action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
                    .default_value("false")
                    .value_parser(go_bool)
            } else {
                arg
            }
        })
        .mut_subcommands(with_go_booleans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_parse_like_go() {
        assert_eq!(parse_int("12c8a203d7419a10", 16), Ok(0x12c8a203d7419a10));
        assert_eq!(parse_int("-5", 10), Ok(-5));
        assert_eq!(
            parse_int("zz", 16),
            Err("strconv.ParseInt: parsing \"zz\": invalid syntax".into())
        );
        assert_eq!(
            parse_int("ffffffffffffffff", 16),
            Err("strconv.ParseInt: parsing \"ffffffffffffffff\": value out of range".into())
        );
        assert_eq!(
            parse_uint("", 16),
            Err("strconv.ParseUint: parsing \"\": invalid syntax".into())
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"foo"), b"fop");
        assert_eq!(prefix_range_end(b"/registry/pods/"), b"/registry/pods0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff"), b"\0");
    }
}
