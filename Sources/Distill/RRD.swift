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
    /// enqueues the teacher's keys first.
    public func callAsFunction(student: Tensor, teacher: Tensor) -> Tensor {
        let batch = student.shape[0]
        precondition(keyCount % batch == 0, "RRD: the queue length \(keyCount) must be a multiple of the batch size \(batch)")
        let zs = embedStudent(student).normalizedRows()
        let zt = withNoGrad { embedTeacher(teacher.detached()).normalizedRows() }
        // Enqueue (outside the graph), then take similarities against the updated queue.
        let pointer = queuePointer.value
        (queue.data + pointer * queue.shape[1]).update(from: zt.data, count: zt.count)
        queuePointer.value = (pointer + batch) % keyCount
        // A copy: the graph must not see later enqueues if backward runs after another call.
        let keys = queue.copy()
        let target = withNoGrad { (zt.matmul(keys, transposeOther: true) * (1 / teacherTemperature)).softmax() }
        let logQ = (zs.matmul(keys, transposeOther: true) * (1 / studentTemperature)).logSoftmax()
        return (target * logQ).sum() * (-1 / Float(batch))
    }
}
