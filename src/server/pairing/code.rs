//! The pairing code itself: how it is drawn, written, read back and hashed.
//!
//! 16 symbols from the OS RNG over a 30-symbol alphabet (Crockford's base32 without `0`, `1`,
//! and without the letters it already leaves out: `I`, `L`, `O`, `U`) — about 78.5 bits, shown
//! as `XXXX-XXXX-XXXX-XXXX`. Input is read back without dashes or spaces and case-insensitively,
//! so a code read aloud or retyped still works. Only the SHA-256 of the normalised code is
//! kept. Must never: log, store or return a code after [`generate`] handed it out.

use sha2::{Digest, Sha256};

use crate::server::auth::{RngError, random_bytes};

/// The symbols a code is made of: no 0/O, no 1/l/I, no U (Crockford's accidental-obscenity rule).
pub const ALPHABET: &[u8; 30] = b"23456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols per code (dashes not counted).
pub const LEN: usize = 16;
const _: () = assert!(LEN >= 16, "the issue's rule: at least 16 symbols");
/// Symbols per dash-separated group when shown.
const GROUP: usize = 4;

/// A fresh code, formatted for a human: `XXXX-XXXX-XXXX-XXXX`.
pub fn generate() -> Result<String, RngError> {
    let mut symbols = Vec::with_capacity(LEN);
    // Rejection sampling: bytes ≥ 240 (= 8 × 30) are drawn again so every symbol is equally
    // likely; one 64-byte draw almost always suffices.
    while symbols.len() < LEN {
        for b in random_bytes::<64>()? {
            if (b as usize) < ALPHABET.len() * (256 / ALPHABET.len()) && symbols.len() < LEN {
                symbols.push(ALPHABET[b as usize % ALPHABET.len()]);
            }
        }
    }
    let groups: Vec<&str> = symbols
        .chunks(GROUP)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    Ok(groups.join("-"))
}

/// The canonical form of a presented code (dashes and spaces dropped, upper case), or `None`
/// when it cannot be a code (wrong length or a symbol outside the alphabet).
pub fn normalize(presented: &str) -> Option<String> {
    let s: String = presented
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (s.len() == LEN && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

/// What the daemon keeps of a code: the SHA-256 of its canonical form. (A code has ~78 bits of
/// entropy and lives minutes, so an unsalted hash cannot be reversed by search.)
pub fn hash(canonical: &str) -> [u8; 32] {
    Sha256::digest(canonical.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_has_no_ambiguous_symbols() {
        for bad in b"0O1lIiLoU" {
            assert!(!ALPHABET.contains(bad), "{}", *bad as char);
        }
        let mut sorted = ALPHABET.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ALPHABET.len(), "no symbol twice");
    }

    #[test]
    fn many_codes_meet_the_length_and_alphabet_rule_and_use_every_symbol() {
        let mut seen = std::collections::HashMap::<u8, usize>::new();
        let mut codes = std::collections::HashSet::new();
        let n = 5000;
        for _ in 0..n {
            let c = generate().unwrap();
            assert_eq!(c.len(), LEN + LEN / GROUP - 1, "{c}");
            let groups: Vec<&str> = c.split('-').collect();
            assert_eq!(groups.len(), LEN / GROUP, "{c}");
            assert!(groups.iter().all(|g| g.len() == GROUP), "{c}");
            let canon = normalize(&c).unwrap();
            assert_eq!(canon.len(), LEN);
            for b in canon.bytes() {
                assert!(ALPHABET.contains(&b), "{c}");
                *seen.entry(b).or_default() += 1;
            }
            codes.insert(canon);
        }
        assert_eq!(codes.len(), n, "no code twice");
        // Uniform: each of the 30 symbols expected 80000/30 ≈ 2667 times; ±20 % is > 9 sigma.
        assert_eq!(seen.len(), ALPHABET.len(), "every symbol appears");
        let expected = (n * LEN) as f64 / ALPHABET.len() as f64;
        for (sym, count) in seen {
            let dev = (count as f64 - expected).abs() / expected;
            assert!(dev < 0.2, "symbol {} seen {count} times", sym as char);
        }
    }

    #[test]
    fn codes_are_read_back_without_dashes_and_in_any_case() {
        let c = generate().unwrap();
        let canon = normalize(&c).unwrap();
        assert_eq!(normalize(&canon).as_deref(), Some(canon.as_str()));
        assert_eq!(
            normalize(&c.to_ascii_lowercase()).as_deref(),
            Some(canon.as_str())
        );
        assert_eq!(hash(&normalize(&c).unwrap()), hash(&canon));
        assert_eq!(normalize("ABCD-EFGH-JKMN-PQR"), None, "too short");
        assert_eq!(normalize("ABCD-EFGH-JKMN-PQRS-T"), None, "too long");
        assert_eq!(normalize("ABCD-EFGH-JKMN-PQR0"), None, "0 is not a symbol");
        assert_eq!(normalize("ABCD-EFGH-JKMN-PQRé"), None);
    }
}
