//! Turning generated token bytes into text that is safe to show as it streams: always
//! valid UTF-8 (an incomplete byte sequence is held back until its last byte arrives),
//! and never any part of a stop string (text that could still grow into one is held back
//! until it cannot).

/// What one push released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Text safe to show now.
    pub text: String,
    /// A stop string was reached: generation should end; nothing after it is shown.
    pub stopped: bool,
}

/// See the module documentation. One per generated sequence.
#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of a UTF-8 sequence still missing its tail.
    partial: Vec<u8>,
    /// Decoded text not yet released because it may be the start of a stop string.
    held: String,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Default::default() }
    }

    /// Adds the bytes of the next token.
    pub fn push(&mut self, bytes: &[u8]) -> Released {
        if self.stopped {
            return Released { text: String::new(), stopped: true };
        }
        self.partial.extend_from_slice(bytes);
        self.decode_partial();
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return Released { text: std::mem::take(&mut self.held), stopped: true };
        }
        let keep = self.longest_stop_prefix_suffix();
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        Released { text: std::mem::replace(&mut self.held, rest), stopped: false }
    }

    /// Ends the stream: releases what was held (an unfinished UTF-8 sequence becomes
    /// U+FFFD, the replacement character).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        out
    }

    /// Moves the complete UTF-8 prefix of `partial` into `held`; bytes that can never be
    /// valid become U+FFFD rather than blocking the stream.
    fn decode_partial(&mut self) {
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.partial.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    self.held.push_str(std::str::from_utf8(&self.partial[..valid]).expect("checked prefix"));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.partial.drain(..valid);
                            return;
                        }
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.partial.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Length of the longest end of `held` that is a proper start of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > best && self.held.ends_with(&stop[..i]) {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let r = s.push(p);
            out.push(r.text);
            if r.stopped {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push(s.finish());
        }
        (out, stopped)
    }

    #[test]
    fn multibyte_characters_wait_for_their_last_byte() {
        let cat = "🐱".as_bytes(); // 4 bytes
        let (out, _) = run(&[], &[b"a", &cat[..1], &cat[1..3], &cat[3..], b"b"]);
        assert_eq!(out, vec!["a", "", "", "🐱", "b", ""]);
    }

    #[test]
    fn a_stop_string_is_never_shown_even_across_pieces() {
        let (out, stopped) = run(&["</end>"], &[b"Hello </", b"en", b"d> ignored"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello ");
        assert_eq!(out[0], "Hello ", "text before a possible stop is released at once");
    }

    #[test]
    fn a_false_start_is_released_once_it_cannot_be_a_stop() {
        let (out, stopped) = run(&["STOP"], &[b"ST", b"ART", b"!"]);
        assert!(!stopped);
        assert_eq!(out, vec!["", "START", "!", ""]);
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["b", "a"], &[b"xxab"]);
        assert!(stopped);
        assert_eq!(out.concat(), "xx");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_unfinished_ones_too() {
        let (out, _) = run(&[], &[&[b'a', 0xff, b'b'], &"é".as_bytes()[..1]]);
        assert_eq!(out.concat(), "a\u{fffd}b\u{fffd}");
    }
}
