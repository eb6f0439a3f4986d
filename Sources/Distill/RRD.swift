import Tensors
import NN

/// Relational Representation Distillation with a FIFO queue of teacher keys (giakoumoglou/distillers,
/// `RRD_FifoMemory_Loss`):
///
///     z_s = normalize(embed_s(f_s)),  z_t = normalize(embed_t(f_t))
///     Q[ptr ..< ptr + B] = sg(z_t);  ptr = (ptr + B) mod K          (before the similarities)
///     loss = - mean_a sum_k softmax(z_t Q^T / tau_t)[a,k] log_softmax(z_s Q^T / tau_s)[a,k]
///
/// The teacher side is detached, so `embed_t` receives no gradient and keeps its initial values. The
/// queue and its pointer are state: they are in the state dict (`queue`, `queue_ptr`) and saved with
/// checkpoints.
public final class RRDQueueLoss: Module {
    public let embedStudent: Linear
    public let embedTeacher: Linear
    /// `K x d` teacher keys.
    public let queue: Tensor
    public let queuePointer = Counter()
    public let studentTemperature: Float
    public let teacherTemperature: Float

    /// - Parameters:
    ///   - keys: K, the queue length (a multiple of the batch size).
    public init(studentDimension: Int, teacherDimension: Int, dimension: Int = 128, keys: Int = 16384,
                studentTemperature: Float = 0.1, teacherTemperature: Float = 0.02, generator: inout SeededGenerator) {
        embedStudent = Linear(inputCount: studentDimension, outputCount: dimension, generator: &generator)
        embedTeacher = Linear(inputCount: teacherDimension, outputCount: dimension, generator: &generator)
        // Standard normal, each column normalised (as the reference's `normalize(randn(K, d), dim=0)`).
        let q = Tensor.randomNormal([keys, dimension], using: &generator)
        queue = q.transposed().normalizedRows().transposed()
        self.studentTemperature = studentTemperature
        self.teacherTemperature = teacherTemperature
        super.init()
    }

    public override var children: [(String, Module)] { [("embed_s", embedStudent), ("embed_t", embedTeacher)] }
    public override var ownBuffers: [(String, Tensor)] { [("queue", queue)] }
    public override var ownCounters: [(String, Counter)] { [("queue_ptr", queuePointer)] }

    public var keyCount: Int { queue.shape[0] }

    /// The loss for student features `f_s` (`B x s_dim`) and teacher features `f_t` (`B x t_dim`);
    /// enqueues the teacher's keys first. With K a multiple of B (as the reference requires) every batch
    /// fills a block of the queue; a smaller final batch of an epoch wraps around the end of the queue.
    public func callAsFunction(student: Tensor, teacher: Tensor) -> Tensor {
        let batch = student.shape[0]
        precondition(batch <= keyCount, "RRD: a batch of \(batch) is larger than the queue (\(keyCount))")
        let zs = embedStudent(student).normalizedRows()
        let zt = withNoGrad { embedTeacher(teacher.detached()).normalizedRows() }
        // Enqueue (outside the graph), then take similarities against the updated queue.
        let pointer = queuePointer.value
        queue.assignRows((0..<batch).map { (pointer + $0) % keyCount }, from: zt)
        queuePointer.value = (pointer + batch) % keyCount
        // A copy: the graph must not see later enqueues if backward runs after another call.
        let keys = queue.copy()
        let target = withNoGrad { (zt.matmul(keys, transposeOther: true) * (1 / teacherTemperature)).softmax() }
        let logQ = (zs.matmul(keys, transposeOther: true) * (1 / studentTemperature)).logSoftmax()
        return (target * logQ).sum() * (-1 / Float(batch))
    }
}

/// Relational Representation Distillation with CRD's per-sample momentum memory instead of a queue
/// (giakoumoglou/distillers, `RRD_MomentumMemory_Loss`), with the similarities themselves as logits, as
/// the paper's formula says (the reference feeds CRD's exponentiated, Z-normalised scores instead):
///
///     keys[a, k] = M[cidx[a, k]]              (K+1 rows per sample; column 0 is the sample's own)
///     loss = - mean_a sum_k softmax(<z_t[a], keys[a,k]> / tau_t) log_softmax(<z_s[a], keys[a,k]> / tau_s)
///     M[idx] = normalize(m M[idx] + (1 - m) z_t)     (after the loss)
///
/// `M` is a memory of teacher embeddings (`n_data x d`, initialised uniform in ±1/sqrt(d/3) and
/// normalised), so both distributions are over the same keys, as in the queue version.
public final class RRDMemoryLoss: Module {
    public let embedStudent: Linear
    public let embedTeacher: Linear
    public let memory: Tensor
    public let negatives: Int
    public let momentum: Float
    public let studentTemperature: Float
    public let teacherTemperature: Float

    public init(studentDimension: Int, teacherDimension: Int, dimension: Int = 128, dataCount: Int, negatives: Int = 16384,
                momentum: Float = 0.5, studentTemperature: Float = 0.1, teacherTemperature: Float = 0.02,
                generator: inout SeededGenerator) {
        embedStudent = Linear(inputCount: studentDimension, outputCount: dimension, generator: &generator)
        embedTeacher = Linear(inputCount: teacherDimension, outputCount: dimension, generator: &generator)
        let bound = 1 / (Float(dimension) / 3).squareRoot()
        memory = Tensor.randomUniform([dataCount, dimension], low: -bound, high: bound, using: &generator).normalizedRows()
        self.negatives = negatives
        self.momentum = momentum
        self.studentTemperature = studentTemperature
        self.teacherTemperature = teacherTemperature
        super.init()
    }

    public override var children: [(String, Module)] { [("embed_s", embedStudent), ("embed_t", embedTeacher)] }
    public override var ownBuffers: [(String, Tensor)] { [("memory", memory)] }

    /// Contrast indices: each sample's own index, then K uniform draws.
    public func contrastIndices(for indices: [Int], using generator: inout SeededGenerator) -> [Int] {
        var result: [Int] = []
        for i in indices {
            result.append(i)
            for _ in 0..<negatives { result.append(Int(generator.next() % UInt64(memory.shape[0]))) }
        }
        return result
    }

    public func callAsFunction(student: Tensor, teacher: Tensor, indices: [Int], contrastIndices: [Int]) -> Tensor {
        let b = student.shape[0], d = memory.shape[1], k1 = negatives + 1
        precondition(contrastIndices.count == b * k1, "RRD: \(contrastIndices.count) contrast indices for \(b) samples and K = \(negatives)")
        let zs = embedStudent(student).normalizedRows()
        let zt = withNoGrad { embedTeacher(teacher.detached()).normalizedRows() }
        let keys = withNoGrad { memory.indexSelect(rows: contrastIndices).reshaped([b, k1, d]) }
        let target = withNoGrad { ((keys * zt.reshaped([b, 1, d])).sum(axis: 2) * (1 / teacherTemperature)).softmax() }
        let logQ = ((keys * zs.reshaped([b, 1, d])).sum(axis: 2) * (1 / studentTemperature)).logSoftmax()
        let loss = (target * logQ).sum() * (-1 / Float(b))
        RelationContrast.momentumUpdate(memory, rows: indices, with: zt, momentum: momentum)
        return loss
    }
}
