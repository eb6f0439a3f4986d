/// The geometry of a 2-D convolution over one image: input size, kernel, stride and zero padding.
public struct ConvGeometry: Sendable, Hashable {
    public let channels, height, width: Int
    public let kernelHeight, kernelWidth: Int
    public let strideHeight, strideWidth: Int
    public let paddingHeight, paddingWidth: Int

    public init(channels: Int, height: Int, width: Int, kernelHeight: Int, kernelWidth: Int,
                strideHeight: Int, strideWidth: Int, paddingHeight: Int, paddingWidth: Int) {
        self.channels = channels; self.height = height; self.width = width
        self.kernelHeight = kernelHeight; self.kernelWidth = kernelWidth
        self.strideHeight = strideHeight; self.strideWidth = strideWidth
        self.paddingHeight = paddingHeight; self.paddingWidth = paddingWidth
    }

    public var outputHeight: Int { (height + 2 * paddingHeight - kernelHeight) / strideHeight + 1 }
    public var outputWidth: Int { (width + 2 * paddingWidth - kernelWidth) / strideWidth + 1 }
    /// Rows of the lowered matrix: one per (channel, kernel row, kernel column).
    public var columnRows: Int { channels * kernelHeight * kernelWidth }
    /// Columns of the lowered matrix for one image: one per output pixel.
    public var columnCols: Int { outputHeight * outputWidth }
    /// Stride 1 with an odd kernel padded to keep the size ("same"): its input gradient is itself a
    /// convolution of the output gradient, with the kernel flipped and transposed.
    public var isSame: Bool {
        strideHeight == 1 && strideWidth == 1 && kernelHeight == 2 * paddingHeight + 1
            && kernelWidth == 2 * paddingWidth + 1
    }
    /// A 1x1, stride-1, unpadded convolution needs no lowering: the image is already the matrix.
    public var isPointwise: Bool {
        kernelHeight == 1 && kernelWidth == 1 && strideHeight == 1 && strideWidth == 1
            && paddingHeight == 0 && paddingWidth == 0
    }

    /// Stride 1, the output as wide as the input, and padding narrower than the image: each lowered row is
    /// the plane shifted by less than one row (the fast path of ``Im2col``).
    var isShiftable: Bool {
        strideHeight == 1 && strideWidth == 1 && outputWidth == width && paddingWidth < width
    }

    /// For kernel offset `j` (columns) the output columns whose input column is inside the image.
    @inline(__always) func validOutputColumns(kernelOffset j: Int) -> Range<Int> {
        let ow = outputWidth
        // ix = ox * s - p + j must satisfy 0 <= ix < width.
        let shift = paddingWidth - j
        var lo = shift > 0 ? (shift + strideWidth - 1) / strideWidth : 0
        var hi = (width - 1 + shift) >= 0 ? (width - 1 + shift) / strideWidth + 1 : 0
        lo = Swift.min(Swift.max(lo, 0), ow)
        hi = Swift.min(Swift.max(hi, lo), ow)
        return lo..<hi
    }
}

/// Lowering of images to matrices for convolution (`im2col`) and its adjoint (`col2im`).
///
/// `lower` writes, for one image and a band of output rows, the `columnRows x (rows * outputWidth)`
/// matrix whose column `p` holds the input patch under output pixel `p` of the band (zeros where the patch
/// overhangs the padding). `accumulate` adds such a matrix back into the image; it is the exact adjoint:
/// `<lower(x), y> == <x, accumulate(y)>`.
public enum Im2col {
    /// Lowers output rows `rows` of `image` (`C x H x W`) into `columns`, a matrix with row stride
    /// `leadingDimension`.
    public static func lower(_ image: UnsafePointer<Float>, _ g: ConvGeometry, rows: Range<Int>? = nil,
                             into columns: UnsafeMutablePointer<Float>, leadingDimension ld: Int) {
        let rows = rows ?? 0..<g.outputHeight
        if g.isShiftable {
            lowerSameWidth(image, g, rows: rows, into: columns, leadingDimension: ld)
            return
        }
        let ow = g.outputWidth
        let kh = g.kernelHeight, kw = g.kernelWidth
        for c in 0..<g.channels {
            let plane = image + c * g.height * g.width
            for i in 0..<kh {
                for j in 0..<kw {
                    let row = columns + ((c * kh + i) * kw + j) * ld
                    let valid = g.validOutputColumns(kernelOffset: j)
                    for oy in rows {
                        let dst = row + (oy - rows.lowerBound) * ow
                        let iy = oy * g.strideHeight - g.paddingHeight + i
                        if iy < 0 || iy >= g.height {
                            Vector.fill(dst, with: 0, count: ow)
                            continue
                        }
                        if valid.lowerBound > 0 { Vector.fill(dst, with: 0, count: valid.lowerBound) }
                        if valid.upperBound < ow {
                            Vector.fill(dst + valid.upperBound, with: 0, count: ow - valid.upperBound)
                        }
                        guard !valid.isEmpty else { continue }
                        let src = plane + iy * g.width
                        let x0 = valid.lowerBound * g.strideWidth - g.paddingWidth + j
                        if g.strideWidth == 1 {
                            Vector.copy(src + x0, to: dst + valid.lowerBound, count: valid.count)
                        } else {
                            let s = g.strideWidth
                            var ix = x0
                            for ox in valid { dst[ox] = src[ix]; ix += s }
                        }
                    }
                }
            }
        }
    }

    /// Stride 1 with the output as wide as the input (the "same" padding of 3x3/pad-1 layers): each row
    /// of the lowered matrix is the channel's plane shifted by the kernel offset, so it is one long copy,
    /// then zeros where the shift wrapped across a row edge or left the image.
    private static func lowerSameWidth(_ image: UnsafePointer<Float>, _ g: ConvGeometry, rows: Range<Int>,
                                       into columns: UnsafeMutablePointer<Float>, leadingDimension ld: Int) {
        let w = g.width, h = g.height
        let kh = g.kernelHeight, kw = g.kernelWidth
        let base = rows.lowerBound * w
        for c in 0..<g.channels {
            let plane = image + c * h * w
            for i in 0..<kh {
                let dy = i - g.paddingHeight
                let rowLow = Swift.max(rows.lowerBound, -dy), rowHigh = Swift.min(rows.upperBound, h - dy)
                for j in 0..<kw {
                    let dx = j - g.paddingWidth
                    // Column p of this row is output pixel base + p of the image.
                    let row = columns + ((c * kh + i) * kw + j) * ld
                    guard rowLow < rowHigh else {
                        Vector.fill(row, with: 0, count: rows.count * w)
                        continue
                    }
                    Vector.fill(row, with: 0, count: (rowLow - rows.lowerBound) * w)
                    Vector.fill(row + (rowHigh * w - base), with: 0, count: (rows.upperBound - rowHigh) * w)
                    // Output p maps to input p + dy*w + dx; skip the ends that would fall outside the plane.
                    let first = rowLow * w + Swift.max(0, -dx)
                    let last = rowHigh * w - Swift.max(0, dx)
                    if first < last {
                        Vector.copy(plane + (first + dy * w + dx), to: row + (first - base), count: last - first)
                    }
                    // Columns whose input column is outside the image.
                    if dx != 0 {
                        let zeroFrom = dx < 0 ? 0 : w - dx, zeroCount = Swift.min(abs(dx), w)
                        for oy in rowLow..<rowHigh {
                            Vector.fill(row + (oy * w + zeroFrom - base), with: 0, count: zeroCount)
                        }
                    }
                }
            }
        }
    }

    /// Adds the lowered matrix `columns` of output rows `rows` (row stride `leadingDimension`) back into
    /// `image` (`C x H x W`). The image is accumulated into, not overwritten. `columns` is scratch:
    /// entries that fall outside the image may be overwritten with zeros.
    public static func accumulate(_ columns: UnsafeMutablePointer<Float>, leadingDimension ld: Int, _ g: ConvGeometry,
                                  rows: Range<Int>? = nil, into image: UnsafeMutablePointer<Float>) {
        let rows = rows ?? 0..<g.outputHeight
        if g.isShiftable {
            accumulateSameWidth(columns, leadingDimension: ld, g, rows: rows, into: image)
            return
        }
        let ow = g.outputWidth
        let kh = g.kernelHeight, kw = g.kernelWidth
        for c in 0..<g.channels {
            let plane = image + c * g.height * g.width
            for i in 0..<kh {
                for j in 0..<kw {
                    let row = columns + ((c * kh + i) * kw + j) * ld
                    let valid = g.validOutputColumns(kernelOffset: j)
                    guard !valid.isEmpty else { continue }
                    for oy in rows {
                        let iy = oy * g.strideHeight - g.paddingHeight + i
                        if iy < 0 || iy >= g.height { continue }
                        let src = row + (oy - rows.lowerBound) * ow
                        let dst = plane + iy * g.width
                        let x0 = valid.lowerBound * g.strideWidth - g.paddingWidth + j
                        if g.strideWidth == 1 {
                            Vector.add(src + valid.lowerBound, into: dst + x0, count: valid.count)
                        } else {
                            let s = g.strideWidth
                            var ix = x0
                            for ox in valid { dst[ix] += src[ox]; ix += s }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of ``lowerSameWidth``: one long vector add per lowered row, after zeroing the entries
    /// whose pixel lies outside the image (they would otherwise wrap into the neighbouring row).
    private static func accumulateSameWidth(_ columns: UnsafeMutablePointer<Float>, leadingDimension ld: Int,
                                            _ g: ConvGeometry, rows: Range<Int>, into image: UnsafeMutablePointer<Float>) {
        let w = g.width, h = g.height
        let kh = g.kernelHeight, kw = g.kernelWidth
        let base = rows.lowerBound * w
        for c in 0..<g.channels {
            let plane = image + c * h * w
            for i in 0..<kh {
                let dy = i - g.paddingHeight
                let rowLow = Swift.max(rows.lowerBound, -dy), rowHigh = Swift.min(rows.upperBound, h - dy)
                guard rowLow < rowHigh else { continue }
                for j in 0..<kw {
                    let dx = j - g.paddingWidth
                    let row = columns + ((c * kh + i) * kw + j) * ld
                    if dx != 0 {
                        let zeroFrom = dx < 0 ? 0 : w - dx, zeroCount = Swift.min(abs(dx), w)
                        for oy in rowLow..<rowHigh {
                            Vector.fill(row + (oy * w + zeroFrom - base), with: 0, count: zeroCount)
                        }
                    }
                    let first = rowLow * w + Swift.max(0, -dx)
                    let last = rowHigh * w - Swift.max(0, dx)
                    if first < last {
                        Vector.add(row + (first - base), into: plane + (first + dy * w + dx), count: last - first)
                    }
                }
            }
        }
    }
}
