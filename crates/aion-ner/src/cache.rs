//! Entities of texts already through the model. Retrieved passages repeat across queries (popular
//! documents are retrieved again and again), and each is a segment of its own, so most of them
//! need the model once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Entity;

/// A bounded map from a segment's text (the key itself: no hash collision can swap two texts'
/// entities) to its entities, offsets relative to the segment. Two generations: when the young
/// one holds half the capacity it becomes the old one and the previous old one is dropped; a hit
/// in the old generation moves the entry back. Lookups and inserts are O(1); what is used stays.
#[derive(Debug, Default)]
pub struct SegmentCache {
    capacity: usize,
    young: HashMap<String, Arc<Vec<Entity>>>,
    old: HashMap<String, Arc<Vec<Entity>>>,
    /// Segments answered without the model (cached, or repeated within a batch).
    pub hits: u64,
    /// Segments the model ran on.
    pub misses: u64,
    /// Entries dropped to stay within the capacity.
    pub evictions: u64,
}

impl SegmentCache {
    /// At most `capacity` entries; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&mut self, text: &str) -> Option<Arc<Vec<Entity>>> {
        if let Some(found) = self.young.get(text) {
            return Some(found.clone());
        }
        let (text, found) = self.old.remove_entry(text)?;
        self.insert(text, found.clone());
        Some(found)
    }

    pub(crate) fn insert(&mut self, text: String, entities: Arc<Vec<Entity>>) {
        if self.capacity == 0 {
            return;
        }
        if self.young.len() >= (self.capacity / 2).max(1) {
            self.evictions += self.old.len() as u64;
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(text, entities);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entities(n: usize) -> Arc<Vec<Entity>> {
        Arc::new(
            (0..n)
                .map(|i| Entity {
                    label: "CITY".into(),
                    text: "x".into(),
                    start: i,
                    end: i + 1,
                    score: 0.9,
                })
                .collect(),
        )
    }

    #[test]
    fn bounded_and_what_is_used_stays() {
        let mut c = SegmentCache::new(4);
        for i in 0..4 {
            c.insert(format!("t{i}"), entities(i));
        }
        assert_eq!(c.len(), 4);
        // t0 is used: it moves to the young generation and survives the next turn.
        assert_eq!(c.get("t0").unwrap().len(), 0);
        for i in 4..6 {
            c.insert(format!("t{i}"), entities(1));
        }
        assert!(c.len() <= 4);
        assert!(c.get("t0").is_some());
        assert!(c.get("t1").is_none(), "unused: evicted");
        assert!(c.evictions >= 2);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let mut c = SegmentCache::new(0);
        c.insert("t".into(), entities(1));
        assert!(c.get("t").is_none());
        assert!(c.is_empty());
    }
}
