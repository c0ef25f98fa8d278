//! Finding where a value ends without decoding it: a resumable walk over the value's top-level items.
//!
//! The walk keeps its position and where it is in the value's structure between calls, so a value that
//! arrives in many pieces is walked once in total (each call re-reads at most the one item it stopped in).
//! Strings are skipped by their length; compact blobs (listpacks, ziplists, ...) are strings here.

use super::reader::{Cur, R};
use super::value::{layout, module_op, read_prim, Layout, P};
use super::{types, Kind};

#[derive(Clone, Copy, Debug)]
enum StreamPhase {
    Count,
    Nodes(u64),
    Meta,
    Groups(u64),
    Pel {
        groups: u64,
        left: u64,
    },
    Consumers {
        groups: u64,
        left: u64,
    },
    ConsumerPel {
        groups: u64,
        consumers: u64,
        left: u64,
    },
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `head`, then items; `left` is `None` until the head was read.
    Items {
        layout: Layout,
        left: Option<u64>,
    },
    Stream {
        version: u8,
        phase: StreamPhase,
    },
    /// Module value: the id, then opcodes to the end marker (`id_read`).
    Module {
        id_read: bool,
    },
}

/// A walk over one value.
#[derive(Clone, Debug)]
pub(crate) struct Scan {
    /// Where the walk stands, as an index into the buffer being walked.
    pub pos: usize,
    shape: Shape,
}

impl Scan {
    /// A walk over a value of type `t` that starts at `pos`, or `None` for a type without a layout
    /// (unknown, or the pre-release module format).
    pub fn new(t: u8, valkey: bool, pos: usize) -> Option<Scan> {
        let shape = match Kind::of(t)? {
            Kind::Stream => Shape::Stream {
                version: match t {
                    types::STREAM_LISTPACKS => 1,
                    types::STREAM_LISTPACKS_2 => 2,
                    _ => 3,
                },
                phase: StreamPhase::Count,
            },
            Kind::Module if t == types::MODULE_2 => Shape::Module { id_read: false },
            Kind::Module => return None,
            _ => Shape::Items {
                layout: layout(t, valkey)?,
                left: None,
            },
        };
        Some(Scan { pos, shape })
    }

    /// A walk over a module AUX body (after its module id): module opcodes to the end marker.
    pub fn module_body(pos: usize) -> Scan {
        Scan {
            pos,
            shape: Shape::Module { id_read: true },
        }
    }

    /// Walk on through `b` (`b[0]` is at input offset `base`). `Ok` when the value's end is reached (at
    /// `self.pos`); `Stop::Need(n)` when `b` must be at least `n` bytes long to go on.
    pub fn run(&mut self, b: &[u8], base: u64) -> R<()> {
        loop {
            let mut c = Cur::new(b, self.pos, base);
            let done = self.step(&mut c)?;
            self.pos = c.pos;
            if done {
                return Ok(());
            }
        }
    }

    /// One atomic step: read one item (or one piece of structure) completely or not at all.
    fn step(&mut self, c: &mut Cur) -> R<bool> {
        match &mut self.shape {
            Shape::Items { layout, left } => match left {
                None => {
                    let mut n = 1;
                    for &p in layout.head {
                        let v = read_prim(c, p)?;
                        if p == P::Len {
                            n = v;
                        }
                    }
                    *left = Some(if layout.counted { n } else { 1 });
                    Ok(false)
                }
                Some(0) => Ok(true),
                Some(n) => {
                    for &p in layout.item {
                        read_prim(c, p)?;
                    }
                    *n -= 1;
                    Ok(false)
                }
            },
            Shape::Module { id_read } => {
                if !*id_read {
                    c.len("module id")?;
                    *id_read = true;
                    return Ok(false);
                }
                module_op(c)
            }
            Shape::Stream { version, phase } => {
                let v = *version;
                let next = match *phase {
                    StreamPhase::Count => StreamPhase::Nodes(c.len("stream listpack count")?),
                    StreamPhase::Nodes(0) => StreamPhase::Meta,
                    StreamPhase::Nodes(n) => {
                        c.string()?;
                        c.string()?;
                        StreamPhase::Nodes(n - 1)
                    }
                    StreamPhase::Meta => {
                        let fields = if v >= 2 { 8 } else { 3 };
                        for _ in 0..fields {
                            c.len("stream metadata")?;
                        }
                        StreamPhase::Groups(c.len("stream group count")?)
                    }
                    StreamPhase::Groups(0) => return Ok(true),
                    StreamPhase::Groups(g) => {
                        c.string()?;
                        c.len("group last ID")?;
                        c.len("group last ID")?;
                        if v >= 2 {
                            c.len("group entries read")?;
                        }
                        let left = c.len("group PEL size")?;
                        StreamPhase::Pel { groups: g, left }
                    }
                    StreamPhase::Pel { groups, left: 0 } => StreamPhase::Consumers {
                        groups,
                        left: c.len("group consumer count")?,
                    },
                    StreamPhase::Pel { groups, left } => {
                        c.take(16 + 8)?;
                        c.len("PEL delivery count")?;
                        StreamPhase::Pel {
                            groups,
                            left: left - 1,
                        }
                    }
                    StreamPhase::Consumers { groups, left: 0 } => StreamPhase::Groups(groups - 1),
                    StreamPhase::Consumers { groups, left } => {
                        c.string()?;
                        c.take(if v >= 3 { 16 } else { 8 })?;
                        let n = c.len("consumer PEL size")?;
                        StreamPhase::ConsumerPel {
                            groups,
                            consumers: left,
                            left: n,
                        }
                    }
                    StreamPhase::ConsumerPel {
                        groups,
                        consumers,
                        left: 0,
                    } => StreamPhase::Consumers {
                        groups,
                        left: consumers - 1,
                    },
                    StreamPhase::ConsumerPel {
                        groups,
                        consumers,
                        left,
                    } => {
                        // Many IDs at once: they are fixed-size.
                        let avail = (c.b.len().saturating_sub(c.pos) / 16) as u64;
                        let n = avail.clamp(1, left);
                        c.take(16 * n)?;
                        StreamPhase::ConsumerPel {
                            groups,
                            consumers,
                            left: left - n,
                        }
                    }
                };
                *phase = next;
                Ok(false)
            }
        }
    }
}
