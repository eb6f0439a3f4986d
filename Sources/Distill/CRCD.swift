import Foundation
import Tensors
import NN

/// Complementary Relation Contrastive Distillation (Lechatelia/CRCD, `CRCDLoss` with `ContrastMemory`).
///
/// Embeddings `v_s = normalize(embed_s(f_s))`, `v_t = normalize(embed_t(f_t))`; two momentum memories
/// of unit rows, `memory_v1` (student side, M_s) and `memory_v2` (teacher side, M_t), `n_data x d`.
/// For the batch's data-set indices `idx` and contrast indices `cidx` (`B x (K+1)`, column 0 = `idx`):
///
///     student side: A = M_t[idx]; r[a,n] = normalize(v_s[a] - A[n] + 1e-6)
///                   w[a,n,k] = normalize(M_t[cidx[a,k]] - A[n] + 1e-6)
///                   out_s[a,n,k] = exp(<w, r> / T) / Z_s
///     teacher side: the mirror image with v_t and M_s.
///     loss = NCE(out_s) + NCE(out_t);  then M[idx] = normalize(m M[idx] + (1 - m) v)
///
/// `Z_s`, `Z_t` are set on the first call to `mean(exp(<w, r>/T)) * n_data` and kept (`contrast.params`).
///
/// The `B x B x (K+1) x d` relation tensor is never formed: `<w, r>` and the norms follow from Gram
/// matrices (one `sgemm` of the gathered contrast rows against the anchors per side), and the backward
/// pass is written out by hand. Entries whose contrast index equals the anchor's index degenerate to
/// `w = normalize(1e-6 * 1)`; they are recognised by comparing indices, not by trusting cancellation.
/// Memory is O(B * B * (K+1)) floats.
public final class CRCDLoss: Module {
    /// `normalize(linear(x))`, with the key layout `linear.weight`, `linear.bias` of the reference.
    public final class Embed: Module {
        public let linear: Linear
        init(inputCount: Int, dimension: Int, generator: inout SeededGenerator) {
            linear = Linear(inputCount: inputCount, outputCount: dimension, generator: &generator)
            super.init()
        }
        public override var children: [(String, Module)] { [("linear", linear)] }
        public func callAsFunction(_ x: Tensor) -> Tensor { linear(x).normalizedRows() }
    }

    /// The two memories and `params = [K, T, Z_s, Z_t, momentum]` (key prefix `contrast.`).
    public final class Memory: Module {
        public let params: Tensor
        public let memoryStudent: Tensor
        public let memoryTeacher: Tensor
        init(rows: Int, dimension: Int, negatives: Int, temperature: Float, momentum: Float, generator: inout SeededGenerator) {
            params = Tensor([Float(negatives), temperature, -1, -1, momentum], shape: [5])
            let bound = 1 / (Float(dimension) / 3).squareRoot()
            memoryStudent = Tensor.randomUniform([rows, dimension], low: -bound, high: bound, using: &generator).normalizedRows()
            memoryTeacher = Tensor.randomUniform([rows, dimension], low: -bound, high: bound, using: &generator).normalizedRows()
            super.init()
        }
        public override var ownBuffers: [(String, Tensor)] {
            [("params", params), ("memory_v1", memoryStudent), ("memory_v2", memoryTeacher)]
        }
    }

    public let embedStudent: Embed
    public let embedTeacher: Embed
    public let contrast: Memory

    public var negatives: Int { Int(contrast.params[flat: 0]) }
    public var temperature: Float { contrast.params[flat: 1] }
    public var momentum: Float { contrast.params[flat: 4] }
    public var dataCount: Int { contrast.memoryStudent.shape[0] }

    /// - Parameters:
    ///   - dataCount: n_data, the training set's size (rows of each memory).
    ///   - negatives: K, contrast samples per anchor (500 in the paper).
    public init(studentDimension: Int, teacherDimension: Int, dimension: Int = 128, dataCount: Int, negatives: Int = 500,
                temperature: Float = 0.05, momentum: Float = 0.5, generator: inout SeededGenerator) {
        embedStudent = Embed(inputCount: studentDimension, dimension: dimension, generator: &generator)
        embedTeacher = Embed(inputCount: teacherDimension, dimension: dimension, generator: &generator)
        contrast = Memory(rows: dataCount, dimension: dimension, negatives: negatives, temperature: temperature,
                          momentum: momentum, generator: &generator)
        super.init()
    }

    public override var children: [(String, Module)] {
        [("embed_s", embedStudent), ("embed_t", embedTeacher), ("contrast", contrast)]
    }

    /// Contrast indices for a batch: column 0 is the sample's own index, the others uniform over the
    /// data set, drawn from `generator`.
    public func contrastIndices(for indices: [Int], using generator: inout SeededGenerator) -> [Int] {
        var result: [Int] = []
        result.reserveCapacity(indices.count * (negatives + 1))
        for i in indices {
            result.append(i)
            for _ in 0..<negatives { result.append(Int(generator.next() % UInt64(dataCount))) }
        }
        return result
    }

    /// The CRCD loss of student features `f_s` and teacher features `f_t` (`B x dim`) for data-set
    /// indices `indices`, with contrast indices `contrastIndices` (`B * (K+1)`, row-major). Moves the
    /// memories afterwards, and sets the normalisers on the first call.
    public func callAsFunction(student: Tensor, teacher: Tensor, indices: [Int], contrastIndices: [Int]) -> Tensor {
        let b = student.shape[0], k1 = negatives + 1
        precondition(teacher.shape[0] == b && indices.count == b && contrastIndices.count == b * k1,
                     "CRCD: \(b) students, \(teacher.shape[0]) teachers, \(indices.count) indices, \(contrastIndices.count) contrast indices for K = \(negatives)")
        let vs = embedStudent(student), vt = embedTeacher(teacher)
        let studentSide = side(vs, memory: contrast.memoryTeacher, indices: indices, contrastIndices: contrastIndices, normaliserIndex: 2)
        let teacherSide = side(vt, memory: contrast.memoryStudent, indices: indices, contrastIndices: contrastIndices, normaliserIndex: 3)
        RelationContrast.momentumUpdate(contrast.memoryStudent, rows: indices, with: vs, momentum: momentum)
        RelationContrast.momentumUpdate(contrast.memoryTeacher, rows: indices, with: vt, momentum: momentum)
        return studentSide + teacherSide
    }

    /// One side's NCE loss (``RelationContrast/side(_:memory:indices:contrastIndices:negatives:temperature:dataCount:normaliser:)``)
    /// in the graph, its normaliser kept in `params[normaliserIndex]`.
    private func side(_ v: Tensor, memory: Tensor, indices: [Int], contrastIndices: [Int], normaliserIndex: Int) -> Tensor {
        var z = contrast.params[flat: normaliserIndex]
        let (loss, gradient) = RelationContrast.side(v, memory: memory, indices: indices, contrastIndices: contrastIndices, negatives: negatives,
                                                     temperature: temperature, dataCount: dataCount, normaliser: &z)
        contrast.params[flat: normaliserIndex] = z
        return Tensor(scalar: loss).recorded("crcdSide", [v]) { upstream in [gradient * upstream.item] }
    }

}

/// CRCD's "gradient element": for a linear classifier, the gradient of the mean cross-entropy with
/// respect to the feature, `g = (softmax(W f + b) - onehot(y)) W / B`, built from ordinary
/// differentiable ops, so a loss on `g` back-propagates to `f`, `W` and `b` (second order without a
/// double backward).
public func gradientElement(feature: Tensor, weight: Tensor, bias: Tensor?, labels: [Int]) -> Tensor {
    let batch = feature.shape[0], classes = weight.shape[0]
    var hot = [Float](repeating: 0, count: batch * classes)
    for (i, y) in labels.enumerated() { hot[i * classes + y] = 1 }
    let oneHot = Tensor(hot, shape: [batch, classes])
    let probabilities = feature.linear(weight: weight, bias: bias).softmax()
    return (probabilities - oneHot).matmul(weight) * (1 / Float(batch))
}

/// The distillation weight over training: the "mimic" schedule of the CRCD repository (1 until the last
/// 1/25 of the iterations, then 0), a constant, or a linear decay to 0.
public enum DistillationWeightSchedule: String, Sendable, Codable, CaseIterable {
    case mimic, constant, linearDecay = "linear-decay"

    /// The weight at `step` of `total` steps.
    public func weight(step: Int, total: Int) -> Float {
        switch self {
        case .constant: return 1
        case .mimic: return step < total - total / 25 ? 1 : 0
        case .linearDecay: return total > 0 ? Swift.max(0, 1 - Float(step) / Float(total)) : 1
        }
    }
}
