//! `redact_pii`: masks e-mail addresses and payment-card numbers.
//!
//! Output always has exactly the input's length (every masked byte becomes
//! one mask byte), so offsets, line numbers and column positions in the
//! redacted capsule still line up with the original.
//!
//! * **E-mail addresses**: every byte of the local part and the domain is
//!   masked except the `@` and the dots, so `john.doe@example.com` becomes
//!   `****.***@*******.***` and still reads as "an address was here".
//!   Local part: up to 64 of `[A-Za-z0-9._%+-]` right before the `@` (longer
//!   runs have their last 64 bytes masked). Domain: up to 255 of
//!   `[A-Za-z0-9.-]`, trailing `.`/`-` dropped, at least one dot, no empty
//!   labels, and an alphabetic top-level label of 2+ letters.
//! * **Card numbers**: 13 to 19 digits written as digit groups joined by a
//!   single space or dash (`4111 1111 1111 1111`, `4111-1111-...`,
//!   `4111111111111111`) that pass the Luhn check. All digits but the last
//!   four are masked; separators are kept. A candidate must start and end on
//!   group boundaries, so a 16-digit card after an unrelated `555 1234` is
//!   still found, while a 20+-digit run is never a card.
//!
//! Where candidates overlap, the union of their masks is applied; every
//! decision is made on the original text. This is a heuristic redactor
//! (a Luhn-valid 13+ digit id is masked too): it favours over-masking.
//!
//! Arguments (all optional): `emails` (bool, default true), `cards` (bool,
//! default true), `mask` (one ASCII character, default `*`).
//!
//! Streaming: whether a byte is masked depends only on bytes within
//! [`LOOKAHEAD`] after and [`CONTEXT`] before it, so each piece's output lags
//! the input by up to `LOOKAHEAD` bytes, which are held back (with the
//! context) and emitted by the next piece or by `finish`. The result is
//! identical however the input is cut into pieces, and the held-back state is
//! under 1 KiB.

use space_guest::{Args, Transform};
use std::collections::VecDeque;

/// Longest local part considered (RFC 5321 limit).
const LOCAL_MAX: usize = 64;
/// Longest domain considered (RFC 1035 limit).
const DOMAIN_MAX: usize = 255;
/// Most bytes a card candidate spans: 19 digits + 18 separators.
const CARD_SPAN: usize = 37;
/// Bytes after a byte that can influence whether it is masked: an e-mail
/// whose `@` is up to `LOCAL_MAX` later needs its whole domain. Rounded up.
pub const LOOKAHEAD: usize = 384;
/// Bytes before a byte that can influence it: an `@` up to `DOMAIN_MAX`
/// earlier plus that address's local part. Rounded up.
pub const CONTEXT: usize = 384;

/// Streaming redactor state for one stream.
pub struct RedactPii {
    emails: bool,
    cards: bool,
    mask: u8,
    /// Original (unmasked) bytes: `hold[..emitted]` was already emitted and
    /// is kept only as left context; `hold[emitted..]` awaits lookahead.
    hold: Vec<u8>,
    emitted: usize,
}

impl Default for RedactPii {
    fn default() -> Self {
        Self {
            emails: true,
            cards: true,
            mask: b'*',
            hold: Vec::new(),
            emitted: 0,
        }
    }
}

/// What to mask inside a range.
#[derive(Clone, Copy)]
enum Kind {
    /// Everything except `@` and `.`.
    Email,
    /// Digits only (separators stay).
    Card,
}

#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: Kind,
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// The address around the `@` at `at`, as `start..end`, if it is one.
fn email_at(buf: &[u8], at: usize) -> Option<Span> {
    let min_start = at.saturating_sub(LOCAL_MAX);
    let mut start = at;
    while start > min_start && is_local(buf[start - 1]) {
        start -= 1;
    }
    if start == at {
        return None;
    }
    let limit = (at + 1 + DOMAIN_MAX).min(buf.len());
    let mut end = at + 1;
    while end < limit && is_domain(buf[end]) {
        end += 1;
    }
    while end > at + 1 && matches!(buf[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = &buf[at + 1..end];
    let mut labels = domain.split(|&b| b == b'.');
    let tld = labels.next_back()?;
    let valid = domain.contains(&b'.')
        && !domain.starts_with(b"-")
        && domain.split(|&b| b == b'.').all(|l| !l.is_empty())
        && tld.len() >= 2
        && tld.iter().all(u8::is_ascii_alphabetic);
    valid.then_some(Span {
        start,
        end,
        kind: Kind::Email,
    })
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Reports every card candidate starting at the digit group beginning at
/// `g` (one per valid group-aligned end), as the span to mask: from `g` up
/// to, not including, the fourth-last digit.
fn cards_at(buf: &[u8], g: usize, mut found: impl FnMut(Span)) {
    let mut digits = [0u8; 19];
    let mut pos = [0usize; 19];
    let mut n = 0;
    let mut p = g;
    loop {
        while p < buf.len() && buf[p].is_ascii_digit() {
            if n == digits.len() {
                return;
            }
            digits[n] = buf[p] - b'0';
            pos[n] = p;
            n += 1;
            p += 1;
        }
        if n >= 13 && luhn(&digits[..n]) {
            found(Span {
                start: g,
                end: pos[n - 4],
                kind: Kind::Card,
            });
        }
        if p + 1 < buf.len() && matches!(buf[p], b' ' | b'-') && buf[p + 1].is_ascii_digit() {
            p += 1;
        } else {
            return;
        }
    }
}

impl RedactPii {
    /// Masks, in `buf`, every byte of `start..end` that a match covers.
    ///
    /// Decisions must see the original text, so spans are queued and applied
    /// only once the scan has moved far enough that no later decision reads
    /// them (all reads happen at most `LOCAL_MAX + 1` bytes behind the scan).
    fn mask_range(&self, buf: &mut [u8], start: usize, end: usize) {
        let scan_from = start.saturating_sub(DOMAIN_MAX.max(CARD_SPAN) + 1);
        let scan_to = (end + LOCAL_MAX).min(buf.len());
        let mut queue: VecDeque<Span> = VecDeque::new();
        for i in scan_from..scan_to {
            let b = buf[i];
            let email = b == b'@' && self.emails;
            let card = self.cards
                && b.is_ascii_digit()
                && i < end
                && (i == 0 || !buf[i - 1].is_ascii_digit());
            if !email && !card {
                continue;
            }
            while let Some(s) = queue.front() {
                if s.end + LOCAL_MAX + 1 > i {
                    break;
                }
                let s = queue.pop_front().expect("front exists");
                self.apply(buf, s, start, end);
            }
            if email {
                if let Some(s) = email_at(buf, i) {
                    queue.push_back(s);
                }
            } else {
                cards_at(buf, i, |s| queue.push_back(s));
            }
        }
        for s in queue {
            self.apply(buf, s, start, end);
        }
    }

    fn apply(&self, buf: &mut [u8], s: Span, start: usize, end: usize) {
        let from = s.start.max(start);
        let to = s.end.min(end);
        if from >= to {
            return;
        }
        let mask = self.mask;
        for b in &mut buf[from..to] {
            let hide = match s.kind {
                Kind::Email => *b != b'@' && *b != b'.',
                Kind::Card => b.is_ascii_digit(),
            };
            if hide {
                *b = mask;
            }
        }
    }

    /// Emits `buf[start..end]` (masked) into `out` and keeps the original
    /// bytes still needed as context or lookahead in `self.hold`.
    fn emit(&mut self, mut buf: Vec<u8>, start: usize, end: usize, out: &mut Vec<u8>) {
        let keep_from = end.saturating_sub(CONTEXT);
        self.hold.clear();
        self.hold.extend_from_slice(&buf[keep_from..]);
        self.emitted = end - keep_from;
        if end > start {
            self.mask_range(&mut buf, start, end);
            buf.truncate(end);
            buf.drain(..start);
            // Hand the buffer over instead of copying it: peak memory stays
            // at input + one working buffer.
            *out = buf;
        }
    }
}

impl Transform for RedactPii {
    fn configure(&mut self, args: &Args) -> Result<(), String> {
        args.allow_only(&["cards", "emails", "mask"])?;
        self.emails = args.flag_or("emails", true)?;
        self.cards = args.flag_or("cards", true)?;
        if let Some(m) = args.get("mask") {
            match m.as_bytes() {
                [c] if c.is_ascii() => self.mask = *c,
                _ => {
                    return Err(format!(
                        "argument `mask`: expected one ASCII character, got `{m}`"
                    ))
                }
            }
        }
        Ok(())
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut buf = Vec::with_capacity(self.hold.len() + input.len());
        buf.extend_from_slice(&self.hold);
        buf.extend_from_slice(input);
        let start = self.emitted;
        let end = buf.len().saturating_sub(LOOKAHEAD).max(start);
        self.emit(buf, start, end, out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.hold);
        let (start, end) = (self.emitted, buf.len());
        self.emit(buf, start, end, out);
        self.hold = Vec::new();
        self.emitted = 0;
    }
}

space_guest::export_transform!(RedactPii);

#[cfg(test)]
mod tests {
    use super::*;
    use space_guest::testing::{assert_split_invariant, run, Lcg};

    fn redact(args: &[(&str, &str)], text: &str) -> String {
        String::from_utf8(assert_split_invariant(
            RedactPii::default,
            args,
            text.as_bytes(),
        ))
        .unwrap()
    }

    #[test]
    fn emails() {
        assert_eq!(
            redact(&[], "mail john.doe@example.com, or <a+b@mx.x-y.co.uk>."),
            "mail ****.***@*******.***, or <***@**.***.**.**>."
        );
        for keep in [
            "a@b",
            "x@localhost",
            "@example.com",
            "a@b.c",
            "a@b..com",
            "a@-b.com",
            "a@b.c0m",
            "x@.com",
        ] {
            assert_eq!(redact(&[], keep), keep, "{keep}");
        }
        // Trailing punctuation is not part of the domain.
        assert_eq!(redact(&[], "to: ann@ex.org."), "to: ***@**.***.");
    }

    #[test]
    fn long_local_part_masks_last_64() {
        let text = format!("{}@ex.org", "a".repeat(100));
        let want = format!("{}{}@**.***", "a".repeat(36), "*".repeat(64));
        assert_eq!(redact(&[], &text), want);
    }

    #[test]
    fn cards() {
        assert_eq!(
            redact(&[], "card 4111 1111 1111 1111 ok"),
            "card **** **** **** 1111 ok"
        );
        assert_eq!(redact(&[], "4111-1111-1111-1111"), "****-****-****-1111");
        assert_eq!(redact(&[], "x4111111111111111y"), "x************1111y");
        assert_eq!(redact(&[], "378282246310005"), "***********0005"); // 15-digit Amex
        assert_eq!(
            redact(&[], "call 555 1234 4111111111111111"),
            "call 555 1234 ************1111"
        );
        for keep in [
            "4111111111111112",     // Luhn fails
            "411111111111",         // 12 digits
            "41111111111111111111", // 20 digits in one group
            "4111  1111 1111 1111", // double separator
            "4111_1111_1111_1111",  // not a separator
            "4111.1111.1111.1111",  // not a separator
        ] {
            assert_eq!(redact(&[], keep), keep, "{keep}");
        }
    }

    #[test]
    fn arguments() {
        let text = "a@b.com 4111111111111111";
        assert_eq!(
            redact(&[("emails", "false")], text),
            "a@b.com ************1111"
        );
        assert_eq!(redact(&[("cards", "no")], text), "*@*.*** 4111111111111111");
        assert_eq!(redact(&[("mask", "#")], text), "#@#.### ############1111");
        assert!(run::<RedactPii>(&[("mask", "##")], &[]).is_err());
        assert!(run::<RedactPii>(&[("phones", "true")], &[]).is_err());
    }

    #[test]
    fn length_preserved_and_empty() {
        assert_eq!(redact(&[], ""), "");
        assert_eq!(redact(&[], "@"), "@");
    }

    /// A long document with PII at varied offsets, so matches straddle the
    /// held-back context/lookahead edges for many different cut points.
    #[test]
    fn long_document_split_everywhere() {
        let mut rng = Lcg(7);
        let mut text = String::new();
        let mut want = String::new();
        // Fillers end in a non-separator so they never join a card candidate.
        let fillers = [
            "lorem ipsum ",
            "id 12345; ",
            "x@y ",
            "a.b. ",
            "\n",
            "tel 555-1234; ",
            "é ",
        ];
        for i in 0..400 {
            for _ in 0..rng.next_u64() % 6 {
                let f = fillers[(rng.next_u64() % fillers.len() as u64) as usize];
                text.push_str(f);
                want.push_str(f);
            }
            match i % 3 {
                0 => {
                    let e = format!("user{i}@host{i}.example.com");
                    want.push_str(&e.replace(|c: char| c != '@' && c != '.', "*"));
                    text.push_str(&e);
                }
                1 => {
                    text.push_str("4111 1111 1111 1111");
                    want.push_str("**** **** **** 1111");
                }
                _ => {
                    text.push_str("5500-0000-0000-0004");
                    want.push_str("****-****-****-0004");
                }
            }
            text.push(' ');
            want.push(' ');
        }
        assert!(text.len() > 8 * (CONTEXT + LOOKAHEAD));
        assert_eq!(redact(&[], &text), want);
    }

    /// Maximal-length addresses: the decision for the first local byte needs
    /// the domain's end ~320 bytes later, and the last domain byte needs the
    /// `@` ~255 bytes earlier. Fails if LOOKAHEAD or CONTEXT is too small.
    #[test]
    fn maximal_addresses_across_boundaries() {
        let label = "d".repeat(63);
        let domain = format!("{label}.{label}.{label}.{}.com", "e".repeat(59));
        assert_eq!(domain.len(), DOMAIN_MAX);
        let email = format!("{}@{domain}", "l".repeat(LOCAL_MAX));
        let masked = email.replace(|c: char| c != '@' && c != '.', "*");
        // Same address but with a bad TLD: nothing may be masked.
        let bogus = email.replace(".com", ".c0m");
        let text = format!("{email} mid {bogus} x {email}");
        let want = format!("{masked} mid {bogus} x {masked}");
        assert_eq!(redact(&[], &text), want);
    }

    #[test]
    fn dense_digits_and_ats() {
        // Worst cases for the span queue and the scan windows.
        let digits: String = (0..3000)
            .map(|i| char::from(b'0' + (i * 7 % 10) as u8))
            .collect();
        let spaced: String = (0..1500).map(|i| format!("{} ", i % 10)).collect();
        let ats = "a@b.cc@d.ee@".repeat(200);
        for text in [digits, spaced, ats] {
            let out = redact(&[], &text);
            assert_eq!(out.len(), text.len());
        }
    }
}
