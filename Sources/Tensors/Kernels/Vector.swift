#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
            while i + 8 <= n { acc = pointwiseMax(acc, load(x + i)); i += 8 }
            best = acc.max()
        }
        while i < n { best = Swift.max(best, x[i]); i += 1 }
        return best
    }

    /// `out[i] = exp(x[i])`.
    public static func exp(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { out[i] = expf(x[i]) }
    }

    /// `out[i] = log(x[i])`.
    public static func log(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { out[i] = logf(x[i]) }
    }

    /// Sets `n` elements to zero.
    public static func zero(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        x.update(repeating: 0, count: n)
    }
}
