//! Entities of texts already through the model. Retrieved passages repeat across queries (popular
//! documents are retrieved again and again), and each is a segment of its own, so most of them
//! need the model once.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::Entity;

/// A segment's key: two independently keyed SipHash-1-3 values of its text, 128 bits. The keys
/// are random per process, so no input can be crafted to collide with another passage and be
/// given its entities; by chance, any two of 100,000 segments collide with probability about
/// 10⁻²⁹. The text itself is not held: a passage of thousands of characters costs 16 bytes.
type Key = (u64, u64);

/// A bounded map from a segment's text to its entities, offsets relative to the segment. One
/// cache belongs to one loaded model, so the model is part of every key implicitly. Two
/// generations: when the young one holds half the capacity it becomes the old one and the
/// previous old one is dropped; a hit in the old generation moves the entry back. Lookups and
/// inserts are O(1); what is used stays.
#[derive(Debug, Default)]
pub struct SegmentCache {
    capacity: usize,
    hashers: (RandomState, RandomState),
    young: HashMap<Key, Arc<Vec<Entity>>>,
    old: HashMap<Key, Arc<Vec<Entity>>>,
    young_bytes: usize,
    old_bytes: usize,
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

    /// Heap bytes the entries hold (keys, entity lists, their strings), for the memory gauge.
    pub fn bytes(&self) -> usize {
        self.young_bytes + self.old_bytes
    }

    fn key(&self, text: &str) -> Key {
        (self.hashers.0.hash_one(text), self.hashers.1.hash_one(text))
    }

    pub(crate) fn get(&mut self, text: &str) -> Option<Arc<Vec<Entity>>> {
        let key = self.key(text);
        if let Some(found) = self.young.get(&key) {
            return Some(found.clone());
        }
        let found = self.old.remove(&key)?;
        self.old_bytes -= weight(&found);
        self.insert_key(key, found.clone());
        Some(found)
    }

    pub(crate) fn insert(&mut self, text: &str, entities: Arc<Vec<Entity>>) {
        let key = self.key(text);
        self.insert_key(key, entities);
    }

    fn insert_key(&mut self, key: Key, entities: Arc<Vec<Entity>>) {
        if self.capacity == 0 {
            return;
        }
        if self.young.len() >= (self.capacity / 2).max(1) {
            self.evictions += self.old.len() as u64;
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::take(&mut self.young_bytes);
        }
        self.young_bytes += weight(&entities);
        if let Some(replaced) = self.young.insert(key, entities) {
            self.young_bytes -= weight(&replaced);
        }
    }
}

/// Heap bytes of one entry: its key and entity list in the map, the entities and their strings.
fn weight(entities: &[Entity]) -> usize {
    std::mem::size_of::<(Key, Arc<Vec<Entity>>)>()
        + std::mem::size_of::<Vec<Entity>>()
        + entities
            .iter()
            .map(|e| std::mem::size_of::<Entity>() + e.label.len() + e.text.len())
            .sum::<usize>()
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
            c.insert(&format!("t{i}"), entities(i));
        }
        assert_eq!(c.len(), 4);
        // t0 is used: it moves to the young generation and survives the next turn.
        assert_eq!(c.get("t0").unwrap().len(), 0);
        for i in 4..6 {
            c.insert(&format!("t{i}"), entities(1));
        }
        assert!(c.len() <= 4);
        assert!(c.get("t0").is_some());
        assert!(c.get("t1").is_none(), "unused: evicted");
        assert!(c.evictions >= 2);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let mut c = SegmentCache::new(0);
        c.insert("t", entities(1));
        assert!(c.get("t").is_none());
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    /// The byte count follows what is held: a passage's length does not count (only its key),
    /// entity strings do, and evicted or replaced entries leave it.
    #[test]
    fn bytes_count_entities_not_passages() {
        let mut c = SegmentCache::new(4);
        let passage = "a long passage ".repeat(1000);
        c.insert(&passage, entities(0));
        let empty = c.bytes();
        assert!(empty < 200, "{empty}");
        c.insert(&passage, entities(2));
        assert_eq!(c.bytes(), weight(&entities(2)));
        assert!(c.get(&passage).is_some_and(|e| e.len() == 2));
        for i in 0..4 {
            c.insert(&format!("t{i}"), entities(1));
        }
        let held: usize = c
            .young
            .values()
            .chain(c.old.values())
            .map(|e| weight(e))
            .sum();
        assert_eq!(c.bytes(), held);
        assert!(c.get(&passage).is_none(), "evicted");
    }
}
