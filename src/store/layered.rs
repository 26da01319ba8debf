//! [`LayeredStore`]: read-only layers over a base, as a diff snapshot lies over a full
//! one. At each offset the top-most layer holding data there wins; a hole in a layer (or
//! a layer shorter than the base) means "look below". Only where every layer has a hole
//! is the result a hole (served as the zero page).

use std::sync::Arc;

use crate::store::{Extent, ExtentKind, Store, StoreError, check_range, read_only};

/// A base store with diff layers on top of it, read-only (see the module doc).
pub struct LayeredStore {
    /// Bottom (the base) first.
    layers: Vec<Arc<dyn Store>>,
}

impl LayeredStore {
    /// `base` with `diffs` on top, the last one top-most. A diff longer than the base is
    /// refused: its pages past the base's end would belong to no guest memory.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`] for a diff longer than the base.
    pub fn new(
        base: Arc<dyn Store>,
        diffs: Vec<Arc<dyn Store>>,
    ) -> Result<LayeredStore, StoreError> {
        if let Some(diff) = diffs.iter().find(|diff| diff.len() > base.len()) {
            return Err(StoreError::OutOfRange {
                offset: 0,
                len: diff.len(),
                store_len: base.len(),
            });
        }
        let mut layers = vec![base];
        layers.extend(diffs);
        Ok(LayeredStore { layers })
    }

    /// The layer whose bytes are at `offset` (`None`: a hole in all of them) and for how
    /// many bytes that stays so.
    fn locate(&self, offset: u64) -> Result<(Option<usize>, u64), StoreError> {
        let mut run = self.len() - offset;
        for (index, layer) in self.layers.iter().enumerate().rev() {
            if offset >= layer.len() {
                continue;
            }
            let extent = layer.extent(offset)?;
            run = run.min(extent.len);
            if extent.kind == ExtentKind::Data {
                return Ok((Some(index), run));
            }
        }
        Ok((None, run))
    }
}

impl Store for LayeredStore {
    fn len(&self) -> u64 {
        self.layers[0].len()
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        check_range(offset, 1, self.len())?;
        let (layer, len) = self.locate(offset)?;
        let kind = match layer {
            Some(_) => ExtentKind::Data,
            None => ExtentKind::Hole,
        };
        Ok(Extent { kind, len })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (layer, run) = self.locate(at)?;
            let len = (run as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + len];
            match layer {
                Some(layer) => self.layers[layer].read_at(at, piece)?,
                None => piece.fill(0),
            }
            done += piece.len();
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, _buf: &[u8]) -> Result<(), StoreError> {
        Err(read_only("write", offset))
    }

    fn allocate(&self, offset: u64, _len: u64) -> Result<(), StoreError> {
        Err(read_only("allocate", offset))
    }

    fn punch_hole(&self, offset: u64, _len: u64) -> Result<(), StoreError> {
        Err(read_only("punch hole", offset))
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.layers
            .iter()
            .map(|layer| layer.allocated_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    const PAGE: u64 = 4096;

    fn store(pages: u64, data: &[(u64, u8)]) -> Arc<dyn Store> {
        let store = MemStore::new(pages * PAGE);
        for &(page, byte) in data {
            store
                .write_at(page * PAGE, &[byte; PAGE as usize])
                .expect("write");
        }
        Arc::new(store)
    }

    #[test]
    fn the_top_most_data_wins_and_holes_look_below() {
        let base = store(8, &[(0, 1), (1, 1), (2, 1), (5, 1)]);
        let diff = store(8, &[(1, 2), (6, 2)]);
        let top = store(3, &[(2, 3)]);
        let layered = LayeredStore::new(base, vec![diff, top]).expect("layers");
        let mut buf = vec![0; 8 * PAGE as usize];
        layered.read_at(0, &mut buf).expect("read");
        let pages: Vec<u8> = buf.chunks(PAGE as usize).map(|page| page[0]).collect();
        assert_eq!(pages, [1, 2, 3, 0, 0, 1, 2, 0]);
        let kinds: Vec<(ExtentKind, u64)> = (0..8)
            .map(|page| {
                let extent = layered.extent(page * PAGE).expect("extent");
                (extent.kind, extent.len / PAGE)
            })
            .collect();
        use ExtentKind::{Data, Hole};
        assert_eq!(
            kinds[0],
            (Data, 1),
            "a diff's data above cuts the base's run"
        );
        assert_eq!(kinds[3], (Hole, 2));
        assert_eq!(kinds[7], (Hole, 1));
        assert!(layered.write_at(0, &[1]).is_err());
    }

    #[test]
    fn a_diff_longer_than_its_base_is_refused() {
        assert!(LayeredStore::new(store(2, &[]), vec![store(3, &[])]).is_err());
    }
}
