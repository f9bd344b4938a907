//! Post-processing of label maps: keep only the largest connected component of each class.
//!
//! Organs such as the hippocampus, liver or kidney are one piece; small islands away from it are
//! false positives. nnU-Net offers the same step (and checks on validation data whether it helps).

use serde::{Deserialize, Serialize};

/// Post-processing applied to every predicted label map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PostProcessing {
    /// The network's argmax as it is.
    #[default]
    None,
    /// Per foreground class, keep the largest 26-connected component; other voxels of that class
    /// become background.
    LargestComponent,
}

impl PostProcessing {
    /// Applies the post-processing in place to a label map of shape `[x, y, z]` (x fastest).
    pub fn apply(self, labels: &mut [u8], shape: [usize; 3]) {
        match self {
            PostProcessing::None => {}
            PostProcessing::LargestComponent => keep_largest_components(labels, shape),
        }
    }
}

/// For every foreground class present, keeps its largest 26-connected component (ties: the one
/// met first in voxel order) and sets the class's other voxels to background (0).
pub fn keep_largest_components(labels: &mut [u8], shape: [usize; 3]) {
    let [nx, ny, nz] = shape;
    assert_eq!(labels.len(), nx * ny * nz, "label map and shape disagree");
    // Component id per voxel (0 = not yet visited or background), sizes and classes per id.
    let mut component = vec![0u32; labels.len()];
    let mut sizes: Vec<usize> = vec![0];
    let mut classes: Vec<u8> = vec![0];
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        let class = labels[start];
        if class == 0 || component[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0usize;
        component[start] = id;
        stack.push(start);
        while let Some(v) = stack.pop() {
            size += 1;
            let (x, y, z) = (v % nx, (v / nx) % ny, v / (nx * ny));
            for dz in -1i64..=1 {
                let zz = z as i64 + dz;
                if zz < 0 || zz >= nz as i64 {
                    continue;
                }
                for dy in -1i64..=1 {
                    let yy = y as i64 + dy;
                    if yy < 0 || yy >= ny as i64 {
                        continue;
                    }
                    for dx in -1i64..=1 {
                        let xx = x as i64 + dx;
                        if xx < 0 || xx >= nx as i64 {
                            continue;
                        }
                        let w = (zz as usize * ny + yy as usize) * nx + xx as usize;
                        if labels[w] == class && component[w] == 0 {
                            component[w] = id;
                            stack.push(w);
                        }
                    }
                }
            }
        }
        sizes.push(size);
        classes.push(class);
    }
    // The largest component of each class.
    let mut keep = [0u32; 256];
    let mut best = [0usize; 256];
    for id in 1..sizes.len() {
        let c = classes[id] as usize;
        if sizes[id] > best[c] {
            best[c] = sizes[id];
            keep[c] = id as u32;
        }
    }
    for (l, &id) in labels.iter_mut().zip(&component) {
        if *l != 0 && keep[*l as usize] != id {
            *l = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &mut [u8], shape: [usize; 3], [x, y, z]: [usize; 3], v: u8) {
        labels[(z * shape[1] + y) * shape[0] + x] = v;
    }

    #[test]
    fn keeps_the_largest_piece_of_each_class() {
        let shape = [8, 7, 5];
        let mut labels = vec![0u8; 8 * 7 * 5];
        // Class 1: a 2x2x2 cube (8 voxels) and a separate 3-voxel bar.
        for z in 0..2 {
            for y in 0..2 {
                for x in 0..2 {
                    set(&mut labels, shape, [x, y, z], 1);
                }
            }
        }
        for x in 5..8 {
            set(&mut labels, shape, [x, 5, 4], 1);
        }
        // Class 2: two voxels touching only at a corner (one 26-component), and a lone voxel.
        set(&mut labels, shape, [4, 2, 2], 2);
        set(&mut labels, shape, [5, 3, 3], 2);
        set(&mut labels, shape, [0, 6, 4], 2);
        let mut out = labels.clone();
        keep_largest_components(&mut out, shape);
        let count = |l: &[u8], c: u8| l.iter().filter(|&&v| v == c).count();
        assert_eq!(count(&out, 1), 8);
        assert_eq!(count(&out, 2), 2);
        assert_eq!(out[(4 * 7 + 5) * 8 + 6], 0, "the bar is removed");
        assert_eq!(out[(4 * 7 + 6) * 8], 0, "the lone class-2 voxel is removed");
        assert_eq!(
            out[(3 * 7 + 3) * 8 + 5],
            2,
            "corner neighbours are connected"
        );
        // Nothing is ever relabelled to another foreground class, and a second pass changes nothing.
        assert!(out.iter().zip(&labels).all(|(&o, &l)| o == l || o == 0));
        let mut again = out.clone();
        PostProcessing::LargestComponent.apply(&mut again, shape);
        assert_eq!(again, out);
    }

    #[test]
    fn classes_do_not_connect_through_each_other() {
        let shape = [5, 1, 1];
        // 1 1 2 1 0: class 1 is split by class 2, so its single voxel at x = 3 goes.
        let mut labels = vec![1, 1, 2, 1, 0];
        keep_largest_components(&mut labels, shape);
        assert_eq!(labels, vec![1, 1, 2, 0, 0]);
        let mut none = vec![1, 0, 1, 0, 1];
        PostProcessing::None.apply(&mut none, shape);
        assert_eq!(none, vec![1, 0, 1, 0, 1]);
    }
}
