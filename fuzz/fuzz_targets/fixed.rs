//! The fixed index of a block image: root and segment blobs (their
//! decrypted bytes), decoded against every layout the root allows.
#![no_main]

use baton_format::fixed::{FixedRoot, FixedSegment, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = FixedRoot::decode(data) {
        // Canonical: what decodes re-encodes to the same bytes.
        assert_eq!(r.encode(), data, "root: non-canonical encoding accepted");
        assert_eq!(r.segments.len() as u64, r.layout.segment_count());
    }
    // A segment is judged against a layout and its place.
    let layout = Layout::new(4096, 4, 4096 * 13 + 7).expect("valid layout");
    for place in 0..layout.segment_count() {
        if let Ok(s) = FixedSegment::decode(data, &layout, place) {
            assert_eq!(s.encode(), data, "segment: non-canonical encoding accepted");
            let (first, count) = layout.segment_range(place);
            assert_eq!((s.first_chunk, s.chunks.len() as u32), (first, count));
        }
    }
});
