import Foundation
import Testing
import CKernels
@testable import Tensors
import TestSupport

/// CRCD's per-entry kernel (`cohort_crcd_row`) on every path this CPU has (scalar with libm on the BLAS
/// path, AVX2, AVX-512; each forced in turn) against the formula of `CKernels.h` evaluated in double
/// precision, for rows crossing the 8- and 16-lane groups, with entries whose contrast row is the anchor
/// itself (degenerate) at the start, inside and in the last partial group, and an anchor index of 0 (what
/// a lane past the row's end would read if it were not masked).
@Suite struct CRCDKernelTests {
    struct Row {
        var pan: [Float], normP: [Float], sumP: [Float], ps: [Float], contrast: [Int64]
        let anchor: Int64
    }

    static func row(_ k1: Int, anchor: Int64, degenerate: [Int], seed: UInt64) -> Row {
        var g = SeededGenerator(seed: seed)
        func values(_ scale: Float, _ offset: Float) -> [Float] {
            Tensor.randomNormal([k1], using: &g).scalars.map { offset + scale * $0 }
        }
        var contrast = (0..<k1).map { Int64($0 + 1) }
        for k in degenerate where k < k1 { contrast[k] = anchor }
        return Row(pan: values(0.5, 0), normP: values(0.5, 4), sumP: values(1, 0), ps: values(1, 0),
                   contrast: contrast, anchor: anchor)
    }

    // The constants of one call (values of the size CRCD meets: T = 0.07, K = 500 of 50,000).
    static let (r, base, wBase, degenerateCos, eps): (Float, Float, Float, Float, Float) = (2, 0.1, 1, 0.3, 1e-4)
    static let (invT, invZ, c, mPn, gradScale): (Float, Float, Float, Float, Float) = (1 / 0.07, 1 / 40, 0.01, 0.01, 0.125)

    /// `cohort_crcd_row` with this suite's constants.
    static func callRow(_ k1: Int, _ pan: UnsafePointer<Float>, _ normP: UnsafePointer<Float>, _ sumP: UnsafePointer<Float>,
                        _ ps: UnsafePointer<Float>, _ contrast: UnsafePointer<Int64>, anchor: Int64,
                        cw: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) -> Double {
        cohort_crcd_row(k1, pan, normP, sumP, ps, contrast, anchor, r, base, wBase, degenerateCos, eps, invT, invZ, c, mPn,
                        gradScale, cw, out)
    }

    /// `callRow` on a row held in arrays.
    static func callRow(_ row: Row, cw: inout [Float], out: inout [Float]) -> Double {
        callRow(row.pan.count, row.pan, row.normP, row.sumP, row.ps, row.contrast, anchor: row.anchor, cw: &cw, out: &out)
    }

    /// (loss, cw, out) in double precision.
    static func reference(_ row: Row) -> (Double, [Double], [Double]) {
        var loss = 0.0, cw = [Double](repeating: 0, count: row.pan.count), out = [0.0, 0.0, 0.0]
        for k in row.pan.indices {
            let w2 = Double(row.normP[k]) - 2 * Double(row.pan[k]) + 2 * Double(eps) * Double(row.sumP[k]) + Double(wBase)
            let w = max(max(w2, 0).squareRoot(), 1e-12)
            let degenerate = row.contrast[k] == row.anchor
            let dot = Double(row.ps[k]) - Double(row.pan[k]) + Double(eps) * Double(row.sumP[k]) - Double(base)
            let cosine = degenerate ? Double(degenerateCos) : dot / (w * Double(r))
            let x = Foundation.exp(cosine * Double(invT)) * Double(invZ), cd = Double(c)
            let g: Double
            if k == 0 {
                loss += Foundation.log(x / (x + cd)); g = -cd / (x + cd) * Double(gradScale)
            } else {
                loss += Foundation.log(Double(mPn) / (x + cd)); g = x / (x + cd) * Double(gradScale)
            }
            let h = degenerate ? 0 : g / (w * Double(r))
            cw[k] = h
            out[0] += g * cosine; out[1] += h; out[2] += degenerate ? g : 0
        }
        return (loss, cw, out)
    }

    static let cases: [(Int, [Int])] = [(1, [0]), (2, [1]), (8, []), (9, [0, 8]), (16, [3]), (17, [16]), (23, [5, 20]), (501, [0, 250, 500])]

    @Test(arguments: 0..<cases.count) func matchesTheFormulaOnEveryPath(_ index: Int) {
        let (k1, degenerate) = Self.cases[index]
        for anchor: Int64 in [0, 7] {
            let row = Self.row(k1, anchor: anchor, degenerate: degenerate, seed: UInt64(index * 10 + Int(anchor)))
            let (expectedLoss, expectedCw, expectedOut) = Self.reference(row)
            for path in Gemm.availablePaths {
                Gemm.withPath(path) {
                    var cw = [Float](repeating: 0.5, count: k1), out: [Float] = [0, 0, 0]
                    let loss = Self.callRow(row, cw: &cw, out: &out)
                    #expect(abs(loss - expectedLoss) <= 1e-5 * max(1, abs(expectedLoss)), "\(path) k1 \(k1): loss \(loss) vs \(expectedLoss)")
                    // cw accumulates: it started at 0.5.
                    let worst = zip(cw, expectedCw).map { abs(Double($0) - 0.5 - $1) / max(abs($1), 1e-3) }.max() ?? 0
                    #expect(worst < 1e-4, "\(path) k1 \(k1): cw off by \(worst)")
                    for i in 0..<3 {
                        #expect(abs(Double(out[i]) - expectedOut[i]) <= 1e-5 * max(1, abs(expectedOut[i])),
                                "\(path) k1 \(k1): out[\(i)] \(out[i]) vs \(expectedOut[i])")
                    }
                }
            }
        }
    }

    /// Every operand of a row whose length is not a multiple of the vector width, with its last element
    /// against an inaccessible page: the kernel reads and writes nothing past the row (a crash otherwise) and
    /// gives the same bits as on ordinary memory.
    @Test(arguments: [3, 9, 17, 23, 501]) func staysInsideTheRow(_ k1: Int) {
        let row = Self.row(k1, anchor: 0, degenerate: [k1 - 1], seed: 77)
        for path in Gemm.availablePaths {
            Gemm.withPath(path) {
                var cw = [Float](repeating: 0.25, count: k1), out: [Float] = [0, 0, 0]
                let loss = Self.callRow(row, cw: &cw, out: &out)
                let pan = GuardedMemory(row.pan, placement: .againstEnd), normP = GuardedMemory(row.normP, placement: .againstEnd)
                let sumP = GuardedMemory(row.sumP, placement: .againstEnd), ps = GuardedMemory(row.ps, placement: .againstEnd)
                let contrast = GuardedMemory(row.contrast, placement: .againstEnd)
                let guardedCw = GuardedMemory([Float](repeating: 0.25, count: k1), placement: .againstEnd)
                var guardedOut: [Float] = [0, 0, 0]
                let guardedLoss = Self.callRow(k1, pan.pointer, normP.pointer, sumP.pointer, ps.pointer, contrast.pointer,
                                               anchor: row.anchor, cw: guardedCw.pointer, out: &guardedOut)
                #expect(guardedLoss == loss && guardedOut == out && guardedCw.values == cw, "\(path) k1 \(k1)")
            }
        }
    }

    /// A NaN in a row's inputs (a diverging embedding) comes out as a NaN loss on every path, in a full
    /// group and in the last partial one, rather than being clamped into a finite number.
    @Test(arguments: [4, 18]) func aNaNInTheRowGivesANaNLoss(_ position: Int) {
        var row = Self.row(20, anchor: 0, degenerate: [], seed: 78)
        row.ps[position] = .nan
        for path in Gemm.availablePaths {
            Gemm.withPath(path) {
                var cw = [Float](repeating: 0, count: 20), out: [Float] = [0, 0, 0]
                let loss = Self.callRow(row, cw: &cw, out: &out)
                #expect(loss.isNaN, "\(path): loss \(loss)")
                #expect(cw[position].isNaN && out[0].isNaN, "\(path)")
            }
        }
    }
}
