//! PLACEHOLDER (in-memory) until the disk-backed implementation lands.
use std::collections::HashSet;
use std::path::Path;

pub struct KeySetBuilder {
    set: HashSet<(u32, Vec<u8>)>,
    n: u64,
}
impl KeySetBuilder {
    pub fn new(_dir: &Path, _name: &str, _mem_bytes: usize) -> KeySetBuilder {
        KeySetBuilder {
            set: HashSet::new(),
            n: 0,
        }
    }
    pub fn insert(&mut self, db: u32, key: &[u8]) -> std::io::Result<()> {
        self.n += 1;
        self.set.insert((db, key.to_vec()));
        Ok(())
    }
    pub fn inserted(&self) -> u64 {
        self.n
    }
    pub fn finish(self) -> std::io::Result<KeySet> {
        Ok(KeySet { set: self.set })
    }
}
pub struct KeySet {
    set: HashSet<(u32, Vec<u8>)>,
}
impl KeySet {
    pub fn len(&self) -> u64 {
        self.set.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
    pub fn contains(&self, db: u32, key: &[u8]) -> std::io::Result<bool> {
        Ok(self.set.contains(&(db, key.to_vec())))
    }
    pub fn contains_many(&self, items: &[(u32, &[u8])]) -> std::io::Result<Vec<bool>> {
        items.iter().map(|(d, k)| self.contains(*d, k)).collect()
    }
}
