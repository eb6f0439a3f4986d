#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CKernels

/// Vectorised loops over raw `Float` buffers. These are the element-wise kernels under the ops; they
/// take pointers and counts, never arrays, and process eight lanes at a time with a scalar tail.
public enum Vector {
    public typealias Lanes = SIMD8<Float>

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> Lanes {
        UnsafeRawPointer(p).loadUnaligned(as: Lanes.self)
    }

    @inline(__always) static func store(_ v: Lanes, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self)
    }

    /// Lane-wise `max(v, 0)`. (The standard library's generic `pointwiseMax` is not specialised here
    /// and costs a call per vector.)
    @inline(__always) public static func relu(_ v: Lanes) -> Lanes {
        v.replacing(with: 0, where: v .< 0)
    }

    /// Lane-wise maximum.
    @inline(__always) public static func maximum(_ a: Lanes, _ b: Lanes) -> Lanes {
        a.replacing(with: b, where: a .< b)
    }

    /// `out[i] = f(a[i])`, with a SIMD form `fv` and a scalar form `fs` of the same function.
    @inline(__always)
    static func map(_ a: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int,
                    _ fv: (Lanes) -> Lanes, _ fs: (Float) -> Float) {
        var i = 0
        while i + 8 <= n { store(fv(load(a + i)), out + i); i += 8 }
        while i < n { out[i] = fs(a[i]); i += 1 }
    }

    /// `out[i] = f(a[i], b[i])`.
    @inline(__always)
    static func zip(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int,
                    _ fv: (Lanes, Lanes) -> Lanes, _ fs: (Float, Float) -> Float) {
        var i = 0
        while i + 8 <= n { store(fv(load(a + i), load(b + i)), out + i); i += 8 }
        while i < n { out[i] = fs(a[i], b[i]); i += 1 }
    }

    /// `y[i] += x[i]`.
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count n: Int) {
        zip(UnsafePointer(y), x, y, n, { $0 + $1 }, { $0 + $1 })
    }

    /// `y[i] += alpha * x[i]`.
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
        let va = Lanes(repeating: alpha)
        zip(UnsafePointer(y), x, y, n, { $0 + va * $1 }, { $0 + alpha * $1 })
    }

    /// `x[i] *= alpha`.
    public static func scale(_ x: UnsafeMutablePointer<Float>, by alpha: Float, count n: Int) {
        let va = Lanes(repeating: alpha)
        map(UnsafePointer(x), x, n, { $0 * va }, { $0 * alpha })
    }

    /// The sum of `n` elements (eight partial sums, then a tree: deterministic for a given `n`).
    public static func sum(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        var acc = Lanes(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load(x + i); i += 8 }
        var total = acc.sum()
        while i < n { total += x[i]; i += 1 }
        return total
    }

    /// The dot product of `n` elements.
    public static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count n: Int) -> Float {
        var acc = Lanes(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load(x + i) * load(y + i); i += 8 }
        var total = acc.sum()
        while i < n { total += x[i] * y[i]; i += 1 }
        return total
    }

    /// The maximum of `n > 0` elements.
    public static func max(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        precondition(n > 0)
        var i = 0
        var best = x[0]
        if n >= 8 {
            var acc = load(x)
            i = 8
            while i + 8 <= n { acc = maximum(acc, load(x + i)); i += 8 }
            best = acc.max()
        }
        while i < n { best = Swift.max(best, x[i]); i += 1 }
        return best
    }

    /// `out[i] = exp(x[i])`.
    /// Vectorised (AVX-512 or AVX2 + FMA, following the kernel path in force; libm on the BLAS path and for
    /// NaN, infinities and arguments outside [-87.3, 88.7]); within 2 ulp of libm's `expf`.
    public static func exp(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count n: Int) {
        cohort_exp(x, out, n)
    }

    /// `out[i] = log(x[i])`.
    /// Vectorised as ``exp(_:_:count:)``; libm for every argument that is not a positive normal number.
    public static func log(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count n: Int) {
        cohort_log(x, out, n)
    }

    /// Copies `n` elements; an inline loop, cheaper than `memmove` for the short rows of image lowering.
    @inline(__always)
    public static func copy(_ source: UnsafePointer<Float>, to destination: UnsafeMutablePointer<Float>, count n: Int) {
        guard n >= 8 else {
            for i in 0..<n { destination[i] = source[i] }
            return
        }
        var i = 0
        while i + 8 <= n { store(load(source + i), destination + i); i += 8 }
        // The tail as one overlapping vector: rewriting a few elements with the same values is harmless.
        if i < n { store(load(source + n - 8), destination + n - 8) }
    }

    /// Sets `n` elements to `value` with an inline loop.
    @inline(__always)
    public static func fill(_ destination: UnsafeMutablePointer<Float>, with value: Float, count n: Int) {
        guard n >= 8 else {
            for i in 0..<n { destination[i] = value }
            return
        }
        let v = Lanes(repeating: value)
        var i = 0
        while i + 8 <= n { store(v, destination + i); i += 8 }
        if i < n { store(v, destination + n - 8) }
    }

    /// Sets `n` elements to zero.
    public static func zero(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        x.update(repeating: 0, count: n)
    }
}
