//! lucid-media: frames in, H.264 access units and CMAF/fMP4 chunks out.
