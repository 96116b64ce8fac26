//! The text-mode font the built-in guest loads into the VGA's plane 2, as
//! a VGA BIOS does for text mode 3: 256 glyphs of 16 lines, a byte a line
//! with the leftmost dot in bit 7.
//!
//! The glyphs of ASCII 0x20-0x7e are the `font8x8` crate's public-domain
//! 8x8 set (`BASIC_LEGACY`, whose bit 0 is the leftmost dot), each of its
//! lines drawn twice; every other code point is blank. The built-in guest
//! prints only ASCII.

/// Lines of a glyph.
pub(crate) const LINES: usize = 16;

/// The glyph of code point `c`.
pub(crate) fn glyph(c: u8) -> [u8; LINES] {
    let mut g = [0u8; LINES];
    if (0x20..0x7f).contains(&c) {
        for (i, line) in font8x8::legacy::BASIC_LEGACY[usize::from(c)].iter().enumerate() {
            let line = line.reverse_bits();
            g[2 * i] = line;
            g[2 * i + 1] = line;
        }
    }
    g
}

/// The 256 glyphs, one after the other.
pub(crate) fn font_8x16() -> Vec<u8> {
    (0..=255u8).flat_map(glyph).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_have_the_leftmost_dot_in_bit_7_and_twice_each_line() {
        // 'I' of font8x8: a bar in the middle, wider at the top and bottom.
        let i = glyph(b'I');
        assert!(i.iter().any(|&l| l != 0));
        assert!(i.chunks(2).all(|p| p[0] == p[1]));
        // '|' is one column: the same dot on every lit line, left of
        // the middle as font8x8 draws it (its bit 3, our bit 4).
        let bar: Vec<u8> = glyph(b'|').into_iter().filter(|&l| l != 0).collect();
        assert!(!bar.is_empty() && bar.iter().all(|&l| l == bar[0] && l.count_ones() <= 2), "{bar:?}");
        assert_eq!(glyph(0x01), [0; LINES]);
        assert_eq!(glyph(b' '), [0; LINES]);
        assert_eq!(font_8x16().len(), 256 * LINES);
    }
}
