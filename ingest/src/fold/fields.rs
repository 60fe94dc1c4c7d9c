//! A state's fields as a batch holds them until its write: every name and
//! value packed into one buffer.
//!
//! A batch of a backlog holds thousands of states, each of some sixty
//! members. As `(String, String)` pairs that is two allocations and 48 bytes
//! of headers per member, several times the bytes of the text itself; packed,
//! it is two allocations per state and four bytes per name or value.

/// Name/value pairs in the order pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fields {
    /// Names and values, one after another.
    text: String,
    /// Where each name or value ends in `text` (names at even places).
    ends: Vec<u32>,
}

impl Fields {
    /// Room for `pairs` pairs of `bytes` bytes in all.
    pub(super) fn with_capacity(pairs: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(pairs * 2),
        }
    }

    /// Appends a pair.
    ///
    /// # Panics
    /// If the fields grow past 4 GiB (a record is bounded far below that
    /// by `ingest.max_record_bytes`).
    pub(super) fn push(&mut self, name: &str, value: &str) {
        for part in [name, value] {
            self.text.push_str(part);
            let end = u32::try_from(self.text.len()).expect("a state's fields fit in 4 GiB");
            self.ends.push(end);
        }
    }

    /// The pairs, in the order pushed.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0usize;
        let mut parts = self.ends.iter().map(move |&end| {
            let part = &self.text[start..end as usize];
            start = end as usize;
            part
        });
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// The value of the last pair named `name`.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, v)| v)
    }

    /// Bytes held on the heap.
    pub(super) fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_in_order_including_empty_names_and_values() {
        let mut f = Fields::with_capacity(3, 16);
        f.push("name", "\"김민준\"");
        f.push("", "");
        f.push("name", "\"x\"");
        let pairs: Vec<_> = f.iter().collect();
        assert_eq!(pairs, [("name", "\"김민준\""), ("", ""), ("name", "\"x\"")]);
        assert_eq!(f.get("name"), Some("\"x\""));
        assert_eq!(f.get(""), Some(""));
        assert_eq!(f.get("missing"), None);
        assert!(f.heap_bytes() >= 6 * 4 + "name\"김민준\"name\"x\"".len());
    }

    #[test]
    fn no_pairs() {
        let f = Fields::default();
        assert_eq!(f.iter().count(), 0);
        assert_eq!(f.get("a"), None);
    }
}
