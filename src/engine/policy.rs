//! The fault policy as a pure function (the decision half of dax_iomap_pte_fault): given
//! the kind of access and the entry's state, what the fault does. No I/O, no ioctls;
//! `fault::resolve` performs the decision.
//!
//! | access        | entry          | store | transition                                     |
//! |---------------|----------------|-------|------------------------------------------------|
//! | read          | Empty          | hole  | zero page, write-protected -> Zero             |
//! | read          | Empty          | data  | copy, write-protected atomically -> Clean      |
//! | read          | Empty, evicted dirty | data | copy writable -> Dirty (a refill)       |
//! | read          | Empty, evicted dirty | hole | as a read of Empty: zero page -> Zero   |
//! | write         | Empty          | hole  | allocate, copy zeros writable -> Dirty         |
//! | write         | Empty          | data  | copy writable -> Dirty                         |
//! | write (WP)    | Zero           | hole  | allocate, lift protection (kernel COWs) -> Dirty |
//! | write (WP)    | Clean          | data  | lift protection in place -> Dirty              |
//!
//! A region that does not track writes only fills: every missing fault is served as a
//! read, with the page left writable (see `install::insert`).
//!
//! **Refill.** A page eviction wrote back and dropped while Dirty (the entry's
//! evicted-dirty mark) was being written; read back Clean and write-protected, its next
//! write would be a write-protect fault, whose un-protect flushes the TLB of every CPU
//! running the process. So it comes back writable and Dirty, as a first write to it would
//! leave it: a page that is not rewritten costs one writeback too many at the next flush
//! or eviction (harmless: its bytes equal the store's), a page that is saves a fault and
//! a TLB shootdown. A hole there (the store was punched since) is read as a hole: no
//! allocation for a read.

use crate::engine::entries::State;
use crate::sys::uffd::Fault;

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// A load from a missing page.
    Read,
    /// A store to a missing page.
    Write,
    /// A store to a present, write-protected page.
    WriteProtect,
}

impl Access {
    /// The access of a fault in a region that tracks writes (`tracks_writes`), or only
    /// fills (then every missing fault is a read: a store to the page it installs is the
    /// kernel's business).
    pub(crate) fn of(fault: &Fault, tracks_writes: bool) -> Access {
        match (fault.write_protect, fault.write && tracks_writes) {
            (true, _) => Access::WriteProtect,
            (false, true) => Access::Write,
            (false, false) => Access::Read,
        }
    }
}

/// What a fault does to its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Ask the store what is there and install it; `mkwrite` installs writable and dirty.
    Fill { mkwrite: bool },
    /// A read of a page evicted dirty: install it alone, writable and dirty if the store
    /// holds data there, as a plain read if a hole (see Refill above).
    Refill,
    /// Make the present page writable and dirty; `allocate` first for a zero page.
    Upgrade { allocate: bool },
    /// Someone else resolved it (or the page was evicted since): wake the waiter, whose
    /// retry faults again if anything is still missing.
    Wake,
}

/// The pure policy: the fault table above, as a function. `evicted_dirty`: the entry's
/// mark that eviction dropped its page right after writing it back (`Entries`, invariant 6).
pub(crate) fn decide(access: Access, state: State, evicted_dirty: bool) -> Decision {
    match (access, state) {
        (Access::Read, State::Empty) if evicted_dirty => Decision::Refill,
        (Access::Read | Access::Write, State::Empty) => Decision::Fill {
            mkwrite: access == Access::Write,
        },
        // A missing-write fault that lost a race with a read fault lands here too: upgrade
        // now rather than wake the writer into a second (write-protect) fault.
        (Access::Write | Access::WriteProtect, State::Zero) => Decision::Upgrade { allocate: true },
        (Access::Write | Access::WriteProtect, State::Clean | State::Dirty) => {
            Decision::Upgrade { allocate: false }
        }
        (Access::Read, _) | (Access::WriteProtect, State::Empty) => Decision::Wake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_table() {
        use Access::*;
        use Decision::*;
        let rows = [
            (Read, State::Empty, Fill { mkwrite: false }),
            (Write, State::Empty, Fill { mkwrite: true }),
            (WriteProtect, State::Zero, Upgrade { allocate: true }),
            (WriteProtect, State::Clean, Upgrade { allocate: false }),
            (WriteProtect, State::Dirty, Upgrade { allocate: false }),
            (Write, State::Zero, Upgrade { allocate: true }),
            (Write, State::Clean, Upgrade { allocate: false }),
            (Read, State::Zero, Wake),
            (Read, State::Clean, Wake),
            (Read, State::Dirty, Wake),
            (WriteProtect, State::Empty, Wake),
        ];
        for (access, state, expected) in rows {
            assert_eq!(
                decide(access, state, false),
                expected,
                "{access:?} on {state:?}"
            );
        }
    }

    /// A page evicted dirty is refilled on a read; a write to it, or any access to a
    /// present page, is decided as without the mark (which only an Empty entry holds).
    #[test]
    fn a_read_of_a_page_evicted_dirty_refills_it() {
        use Access::*;
        assert_eq!(decide(Read, State::Empty, true), Decision::Refill);
        assert_eq!(
            decide(Write, State::Empty, true),
            Decision::Fill { mkwrite: true }
        );
        assert_eq!(decide(WriteProtect, State::Empty, true), Decision::Wake);
    }

    #[test]
    fn access_is_decoded_from_the_fault_flags() {
        let fault = |write, write_protect| Fault {
            address: 0,
            write,
            write_protect,
        };
        assert_eq!(Access::of(&fault(false, false), true), Access::Read);
        assert_eq!(Access::of(&fault(true, false), true), Access::Write);
        assert_eq!(Access::of(&fault(true, true), true), Access::WriteProtect);
        // A region that only fills serves a missing write as a read.
        assert_eq!(Access::of(&fault(true, false), false), Access::Read);
    }
}
