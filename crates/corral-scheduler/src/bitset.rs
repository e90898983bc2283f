//! A fixed-size set of host ranks.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BitSet {
    words: Vec<u64>,
    len: usize,
}

impl BitSet {
    pub(crate) fn empty(len: usize) -> BitSet {
        BitSet {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    pub(crate) fn from_indices(len: usize, indices: &[u32]) -> BitSet {
        let mut s = BitSet::empty(len);
        for &i in indices {
            s.insert(i as usize);
        }
        s
    }

    fn trim(&mut self) {
        let rem = self.len % 64;
        if rem != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rem) - 1;
        }
    }

    pub(crate) fn insert(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    pub(crate) fn remove(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    pub(crate) fn intersect(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= *b;
        }
    }

    pub(crate) fn complement(&self) -> BitSet {
        let mut s = BitSet {
            words: self.words.iter().map(|w| !w).collect(),
            len: self.len,
        };
        s.trim();
        s
    }

    /// Members in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    None
                } else {
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    Some(wi * 64 + bit)
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut a = BitSet::from_indices(130, &[0, 5, 64, 129]);
        assert!(a.contains(129) && !a.contains(128) && !a.contains(500));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 5, 64, 129]);
        let c = a.complement();
        assert_eq!(c.iter().count(), 126);
        assert!(!c.contains(5));
        assert_eq!(BitSet::empty(130).complement().iter().count(), 130);
        a.intersect(&BitSet::from_indices(130, &[5, 64, 100]));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![5, 64]);
        a.remove(5);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![64]);
        assert_eq!(BitSet::empty(0).complement().iter().count(), 0);
        assert_eq!(BitSet::empty(64).complement().iter().count(), 64);
    }
}
