// Colours shared by the views: orange for negative / class 0, blue for positive /
// class 1 (TF Playground's convention), a neutral grey-white for 0; more classes
// get more hues.

export const NEG = [245, 147, 34];
export const MID = [232, 234, 235];
export const POS = [8, 119, 189];
export const CLASS_RGB = [NEG, POS, [44, 160, 44], [148, 103, 189], [214, 39, 40], [140, 86, 75]];

export function css(rgb, alpha = 1) {
  return alpha === 1 ? `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`
    : `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${alpha})`;
}

export function mix(a, b, t) {
  return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
}

// t in [-1, 1] (clipped): orange .. white .. blue
export function diverging(t) {
  if (!(t === t)) return [0, 0, 0]; // NaN shows black: never a plausible colour
  const c = Math.max(-1, Math.min(1, t));
  return c < 0 ? mix(MID, NEG, -c) : mix(MID, POS, c);
}

export function classColor(k) {
  return CLASS_RGB[k % CLASS_RGB.length];
}
