//! The tree as a replica checkpoint holds it: every node as it is, not
//! just the entries, because the opt-PSMR safety check looks at the shape
//! (a leaf's room, its fences), and a restored replica must reach the
//! verdicts of the others.
//!
//! [`TreeImage`] is captured while no command runs (a copy of the node
//! arrays) and written beside execution. Format, little-endian:
//! `b"PSMRBTI1" | fanout: u32 | height: u32 | root: u32 | leaf_count: u64`,
//! then the arrays, each `len: u64 | len × element`: inner keys (u64),
//! inner children, inner lengths, free inner nodes (u32), leaf words (u64),
//! leaf next (u32), leaf low and high fences (u64), free leaves (u32).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{BTree, Line, MIN_FANOUT, WORDS_PER_LINE};

const MAGIC: &[u8; 8] = b"PSMRBTI1";

/// Elements written or read per call, to keep the buffer small.
const CHUNK: usize = 8192;

/// A copy of a tree's nodes, taken at a checkpoint's cut.
#[derive(Debug)]
pub struct TreeImage {
    fanout: u32,
    height: u32,
    root: u32,
    leaf_count: u64,
    inner_keys: Vec<u64>,
    inner_children: Vec<u32>,
    inner_len: Vec<u32>,
    inner_free: Vec<u32>,
    words: Vec<u64>,
    leaf_next: Vec<u32>,
    leaf_lo: Vec<u64>,
    leaf_hi: Vec<u64>,
    leaf_free: Vec<u32>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

trait Element: Copy + Default {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

impl Element for u64 {
    const SIZE: usize = 8;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

impl Element for u32 {
    const SIZE: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

fn write_array<T: Element>(out: &mut dyn Write, items: &[T]) -> io::Result<()> {
    out.write_all(&(items.len() as u64).to_le_bytes())?;
    let mut buf = Vec::with_capacity(CHUNK * T::SIZE);
    for chunk in items.chunks(CHUNK) {
        buf.clear();
        chunk.iter().for_each(|x| x.put(&mut buf));
        out.write_all(&buf)?;
    }
    Ok(())
}

fn read_u64(input: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(input: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads an array of at most `max` elements (the image's own sizes bound
/// every array, so a damaged length cannot make it allocate without end).
fn read_array<T: Element>(input: &mut dyn Read, max: u64, name: &str) -> io::Result<Vec<T>> {
    let len = read_u64(input)?;
    if len > max {
        return Err(invalid(format!(
            "tree image: {name}: {len} elements, at most {max}"
        )));
    }
    let mut items = Vec::with_capacity(len as usize);
    let mut buf = vec![0u8; CHUNK * T::SIZE];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(CHUNK);
        input.read_exact(&mut buf[..n * T::SIZE])?;
        items.extend(buf[..n * T::SIZE].chunks_exact(T::SIZE).map(T::get));
        left -= n;
    }
    Ok(items)
}

impl BTree {
    /// Copies the nodes; call while nothing writes the tree.
    pub fn capture(&self) -> TreeImage {
        TreeImage {
            fanout: self.fanout as u32,
            height: self.height,
            root: self.root,
            leaf_count: self.leaf_count as u64,
            inner_keys: self.inner_keys.clone(),
            inner_children: self.inner_children.clone(),
            inner_len: self.inner_len.clone(),
            inner_free: self.inner_free.clone(),
            words: self
                .leaf_words
                .iter()
                .flat_map(|line| line.0.iter().map(|w| w.load(Relaxed)))
                .collect(),
            leaf_next: self.leaf_next.clone(),
            leaf_lo: self.leaf_lo.clone(),
            leaf_hi: self.leaf_hi.clone(),
            leaf_free: self.leaf_free.clone(),
        }
    }

    /// Reads a tree written by [`TreeImage::write`], node for node, and
    /// checks its structure; a damaged image is an `InvalidData` error.
    pub fn read_image(input: &mut dyn Read) -> io::Result<BTree> {
        let mut magic = [0; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a B+-tree image (bad magic)"));
        }
        let fanout = read_u32(input)? as usize;
        if !(MIN_FANOUT..=1 << 16).contains(&fanout) {
            return Err(invalid(format!("tree image: fanout {fanout}")));
        }
        let mut tree = BTree::new(fanout);
        tree.height = read_u32(input)?;
        tree.root = read_u32(input)?;
        let leaves = read_u64(input)?;
        if leaves >= u64::from(u32::MAX) {
            return Err(invalid(format!("tree image: {leaves} leaves")));
        }
        let nodes_max = u64::from(u32::MAX);
        let f = fanout as u64;
        tree.inner_keys = read_array(input, nodes_max.saturating_mul(f), "inner keys")?;
        let nodes = tree.inner_keys.len() as u64 / f;
        tree.inner_children = read_array(input, nodes * (f + 1), "inner children")?;
        tree.inner_len = read_array(input, nodes, "inner lengths")?;
        tree.inner_free = read_array(input, nodes, "free inner nodes")?;
        let stride = tree.stride as u64;
        let words: Vec<u64> = read_array(input, leaves * stride, "leaf words")?;
        tree.leaf_count = leaves as usize;
        tree.leaf_next = read_array(input, leaves, "leaf next")?;
        tree.leaf_lo = read_array(input, leaves, "leaf low fences")?;
        tree.leaf_hi = read_array(input, leaves, "leaf high fences")?;
        tree.leaf_free = read_array(input, leaves, "free leaves")?;
        if words.len() as u64 != leaves * stride {
            return Err(invalid("tree image: leaf words do not fill the leaves"));
        }
        tree.leaf_words = words
            .chunks_exact(WORDS_PER_LINE)
            .map(|c| Line(std::array::from_fn(|i| AtomicU64::new(c[i]))))
            .collect();
        tree.check()
            .map_err(|broken| invalid(format!("tree image: {broken}")))?;
        Ok(tree)
    }
}

impl TreeImage {
    /// Writes the image in the format of this module.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        for word in [self.fanout, self.height, self.root] {
            out.write_all(&word.to_le_bytes())?;
        }
        out.write_all(&self.leaf_count.to_le_bytes())?;
        write_array(out, &self.inner_keys)?;
        write_array(out, &self.inner_children)?;
        write_array(out, &self.inner_len)?;
        write_array(out, &self.inner_free)?;
        write_array(out, &self.words)?;
        write_array(out, &self.leaf_next)?;
        write_array(out, &self.leaf_lo)?;
        write_array(out, &self.leaf_hi)?;
        write_array(out, &self.leaf_free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree grown and shrunk at random, imaged and read back, is the same
    /// tree node for node (its next image is the same bytes), and a damaged
    /// image is refused, never panics.
    #[test]
    fn an_image_reads_back_node_for_node_and_damage_is_refused() {
        use rand::{RngExt, SeedableRng};
        use rand_chacha::ChaCha8Rng;
        for seed in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut tree = BTree::new(4 + seed as usize % 5);
            for _ in 0..2_000 {
                let k = rng.random_range(0..500);
                if rng.random_bool(0.6) {
                    tree.insert(k, k * 3);
                } else {
                    tree.remove(k);
                }
            }
            let mut bytes = Vec::new();
            tree.capture().write(&mut bytes).unwrap();
            let back = BTree::read_image(&mut bytes.as_slice()).unwrap();
            let mut again = Vec::new();
            back.capture().write(&mut again).unwrap();
            assert_eq!(bytes, again, "seed {seed}");
            assert_eq!(back.digest(), tree.digest(), "seed {seed}");
            for _ in 0..50 {
                let mut damaged = bytes.clone();
                let at = rng.random_range(0..damaged.len());
                damaged[at] ^= 1 << rng.random_range(0..8);
                let _ = BTree::read_image(&mut damaged.as_slice());
                let cut = rng.random_range(0..bytes.len());
                assert!(
                    BTree::read_image(&mut &bytes[..cut]).is_err(),
                    "seed {seed} cut {cut}"
                );
            }
        }
    }
}
