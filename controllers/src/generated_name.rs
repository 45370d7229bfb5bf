//! Names for new objects, made the way the apiserver makes them from `generateName`.
//!
//! The controllers name their new EndpointSlices themselves instead of leaving it to the
//! apiserver, so that a create whose outcome is unknown (its sync cut off by a timeout or a
//! lost lease while the request was on its way) can be sent again under the same name: the
//! apiserver then refuses the second one (409) instead of storing a duplicate. The names look
//! exactly like the apiserver's, and `generateName` is still sent, so the stored object is the
//! same as upstream's.

/// The characters the apiserver draws the suffix from (no vowels, no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of the random suffix.
const SUFFIX: usize = 5;
/// Longest base kept: the apiserver keeps generated names within 63 characters.
const MAX_BASE: usize = 63 - SUFFIX;

/// `base` (cut to 58 bytes on a character boundary) followed by five characters drawn with
/// `random`, which returns any `u32` (it is reduced to the alphabet here).
pub fn generated_name(base: &str, mut random: impl FnMut() -> u32) -> String {
    let mut cut = base.len().min(MAX_BASE);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut name = String::with_capacity(cut + SUFFIX);
    name.push_str(&base[..cut]);
    for _ in 0..SUFFIX {
        name.push(char::from(ALPHABET[random() as usize % ALPHABET.len()]));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_look_like_the_apiservers() {
        let mut n = 0u32;
        let mut counter = || {
            n += 1;
            n
        };
        assert_eq!(generated_name("web-", &mut counter), "web-cdfgh");
        let long = "a".repeat(70);
        let name = generated_name(&long, &mut counter);
        assert_eq!(name.len(), 63);
        assert!(name.starts_with(&"a".repeat(58)));
        assert!(name[58..].bytes().all(|b| ALPHABET.contains(&b)));
        // Wraps around the alphabet instead of indexing past it.
        assert_eq!(generated_name("x-", || u32::MAX), "x-44444");
    }
}
