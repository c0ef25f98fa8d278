//! What one target has applied of one source's replication stream.
//!
//! A master offset only means something within one replication history: after a full resync the master may
//! number its stream anew (a restarted master without persistence starts again near 0), so an offset is
//! kept with its *epoch* — how many full resyncs the consumer has started — and a batch of an older epoch
//! that is answered late can never raise the offset of a newer one. The stream's current db at that offset
//! is kept beside it: a partial resync continues without a `SELECT` (the master only sends one when the db
//! changes), so a resume needs it (a real replica keeps `repl-stream-db` for the same reason).

use std::sync::Mutex;

/// A position in a source's replication stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// Full resyncs started before this position (0 until the first).
    pub epoch: u64,
    /// Master offset of the last byte applied; -1 when nothing of this epoch is applied yet (a snapshot
    /// being loaded).
    pub offset: i64,
    /// The source db the stream is in after that byte.
    pub db: u32,
}

impl Pos {
    pub const NONE: Pos = Pos {
        epoch: 0,
        offset: -1,
        db: 0,
    };
}

/// The applied position of one (source, target) pair. Advanced by the writer pool when a batch's last reply
/// arrives; moved to a new epoch by the source's consumer when a full resync starts.
#[derive(Debug)]
pub struct Applied(Mutex<Pos>);

impl Default for Applied {
    fn default() -> Self {
        Applied(Mutex::new(Pos::NONE))
    }
}

impl Applied {
    pub fn new(start: Pos) -> Applied {
        Applied(Mutex::new(start))
    }

    pub fn get(&self) -> Pos {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything up to `to` is on the target. Ignored when `to` belongs to another epoch or is not ahead.
    pub fn advance(&self, to: Pos) {
        let mut cur = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if to.epoch == cur.epoch && to.offset > cur.offset {
            *cur = to;
        }
    }

    /// Start an epoch at `at` (offset -1: nothing of it applied yet). Batches of earlier epochs no longer
    /// count.
    pub fn begin(&self, at: Pos) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_epoch_never_raises_a_new_one() {
        let a = Applied::default();
        a.advance(Pos {
            epoch: 0,
            offset: 100,
            db: 2,
        });
        assert_eq!(a.get().offset, 100);
        a.advance(Pos {
            epoch: 0,
            offset: 50,
            db: 0,
        });
        assert_eq!(
            a.get(),
            Pos {
                epoch: 0,
                offset: 100,
                db: 2
            },
            "never backwards"
        );
        a.begin(Pos {
            epoch: 1,
            offset: -1,
            db: 0,
        });
        // A batch of the first epoch answered after the full resync began: offset 5000 of another history.
        a.advance(Pos {
            epoch: 0,
            offset: 5000,
            db: 0,
        });
        assert_eq!(a.get().offset, -1);
        a.advance(Pos {
            epoch: 1,
            offset: 10,
            db: 1,
        });
        assert_eq!(
            a.get(),
            Pos {
                epoch: 1,
                offset: 10,
                db: 1
            }
        );
    }
}
