//! Passwords read from the terminal or stdin, exactly as etcdctl reads them, so scripts that pipe
//! passwords into etcdctl work unchanged with oxcdctl.
//!
//! etcdctl prompts through speakeasy: the prompt goes to stdout, `/bin/stty -echo` and
//! `/bin/stty echo` run around the read with etcdctl's stdin, stdout and stderr (when stdin is
//! no terminal, each stty prints "Inappropriate ioctl for device" on stderr and the read goes on
//! regardless), one line is read from stdin and a newline ends the prompt. `--interactive=false`
//! reads with Go's `fmt.Scanf("%s")` instead: one word, nothing at all if a newline comes first.
//! Both read byte by byte, leaving the rest of stdin to whatever reads it next.

use std::io::{BufRead, Read, Write};

/// speakeasy's `Ask`: the prompt, then a line from stdin with terminal echo off, trimmed.
/// Fails only when stty cannot be started.
pub fn ask(prompt: &str) -> Result<String, String> {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let answer = stty("-echo").map(|()| {
        let line = read_line(&mut std::io::stdin().lock());
        // speakeasy turns echo back on whatever the read gave; its status is not looked at.
        let _ = stty("echo");
        line.trim().to_string()
    });
    println!();
    answer
}

/// speakeasy runs `/bin/stty` as `stty` (its messages name it so) with an empty environment (Go's
/// ForkExec without `Env`), so they are never translated.
fn stty(setting: &str) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let status = std::process::Command::new("/bin/stty")
        .arg0("stty")
        .arg(setting)
        .env_clear()
        .status();
    match status {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "failed turning off console echo for password entry:\n\t{e}"
        )),
    }
}

/// speakeasy's `readline`: bytes up to a newline or the end of input, without a final `\r`.
fn read_line(input: &mut impl BufRead) -> String {
    let mut line = Vec::new();
    // A read error ends the line as the end of input does.
    let _ = input.read_until(b'\n', &mut line);
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Go's `fmt.Scanf("%s", &word)` on stdin, which `--interactive=false` uses.
pub fn scan_word() -> String {
    scan(&mut std::io::stdin().lock())
}

/// Spaces before the word are skipped, but a newline there fails the scan (an empty word); the
/// space that ends the word is consumed with it.
fn scan(input: &mut impl Read) -> String {
    let mut word = Vec::new();
    loop {
        match next_char(input) {
            None => return String::new(),
            Some((bytes, _)) if bytes == b"\n" => return String::new(),
            Some((_, true)) => continue,
            Some((bytes, false)) => {
                word.extend(bytes);
                break;
            }
        }
    }
    while let Some((bytes, false)) = next_char(input) {
        word.extend(bytes);
    }
    String::from_utf8_lossy(&word).into_owned()
}

/// The bytes of the next UTF-8 character of `input` (read one byte at a time, as Go's fmt reads a
/// reader without `UnreadRune`), and whether Go's fmt counts it as a space.
fn next_char(input: &mut impl Read) -> Option<(Vec<u8>, bool)> {
    let mut byte = [0u8];
    let mut read_byte = |input: &mut dyn Read| match input.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        _ => None,
    };
    let first = read_byte(input)?;
    let len = match first {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    };
    let mut bytes = vec![first];
    while bytes.len() < len {
        match read_byte(input) {
            Some(b) => bytes.push(b),
            None => break,
        }
    }
    // fmt's table of spaces is exactly Unicode's White_Space, which `is_whitespace` tests.
    let space = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.chars().next())
        .is_some_and(char::is_whitespace);
    Some((bytes, space))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_one_word_like_go() {
        let mut input: &[u8] = b"  secret word\nnext";
        assert_eq!(scan(&mut input), "secret");
        assert_eq!(input, b"word\nnext");
        let mut input: &[u8] = b"pw\nrest";
        assert_eq!(scan(&mut input), "pw");
        assert_eq!(input, b"rest");
        let mut input: &[u8] = b"\npw\n";
        assert_eq!(scan(&mut input), "");
        assert_eq!(input, b"pw\n");
        let mut input: &[u8] = b" \r\npw";
        assert_eq!(scan(&mut input), "");
        assert_eq!(scan(&mut (b"" as &[u8])), "");
        assert_eq!(scan(&mut ("p\u{a0}q".as_bytes())), "p");
    }

    #[test]
    fn reads_a_line_like_speakeasy() {
        let mut input: &[u8] = b"pw one\r\nnext\n";
        assert_eq!(read_line(&mut input), "pw one");
        assert_eq!(input, b"next\n");
        assert_eq!(read_line(&mut (b"last" as &[u8])), "last");
        assert_eq!(read_line(&mut (b"" as &[u8])), "");
    }
}
