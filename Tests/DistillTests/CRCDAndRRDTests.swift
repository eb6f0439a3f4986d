import Testing
import Tensors
import NN
import TestSupport
@testable import Distill

@Suite struct CRCDTests {
    /// The hand-written backward of a CRCD side against finite differences, with contrast indices that
    /// hit other anchors' indices (degenerate relations off the diagonal) and repeats.
    @Test func crcdGradientMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 31)
        let loss = CRCDLoss(studentDimension: 5, teacherDimension: 7, dimension: 6, dataCount: 20, negatives: 4,
                            generator: &generator)
        let indices = [3, 7, 11]
        let contrast = [3, 7, 7, 19, 0,   7, 3, 11, 5, 5,   11, 2, 3, 7, 19]
        let state = loss.stateDict().map { ($0.0, $0.1.copy()) }
        let fs = randn([3, 5], seed: 32), ft = randn([3, 7], seed: 33)
        // Each evaluation starts from the same memories and normalisers.
        func evaluate(_ inputs: [Tensor]) -> Tensor {
            for (name, t) in loss.stateDict() { t.assign(state.first { $0.0 == name }!.1) }
            return loss(student: inputs[0], teacher: inputs[1], indices: indices, contrastIndices: contrast)
        }
        _ = withNoGrad { evaluate([fs, ft]) }   // sets Z
        for (name, t) in loss.stateDict() where name == "contrast.params" {
            let z = t.scalars
            state.first { $0.0 == name }!.1.assign(z)
        }
        expectGradients([fs, ft], check: GradientCheck(step: 1e-3, relativeTolerance: 2e-2, absoluteTolerance: 2e-3)) {
            evaluate($0)
        }
    }

    @Test func memoriesMoveTowardsTheBatchAndStayUnit() {
        var generator = SeededGenerator(seed: 34)
        let loss = CRCDLoss(studentDimension: 4, teacherDimension: 4, dimension: 8, dataCount: 10, negatives: 3,
                            generator: &generator)
        let before = loss.contrast.memoryStudent.copy()
        var g2 = SeededGenerator(seed: 35)
        let contrast = loss.contrastIndices(for: [2, 5], using: &g2)
        #expect(contrast.count == 8 && contrast[0] == 2 && contrast[4] == 5 && contrast.allSatisfy { $0 >= 0 && $0 < 10 })
        _ = loss(student: randn([2, 4], seed: 36), teacher: randn([2, 4], seed: 37), indices: [2, 5], contrastIndices: contrast)
        let after = loss.contrast.memoryStudent
        for r in 0..<10 {
            let row = Array(after.scalars[(r * 8)..<(r * 8 + 8)])
            let norm: Float = row.map { $0 * $0 }.reduce(0, +)
            #expect(abs(norm - 1) < 1e-5)
            #expect((row == Array(before.scalars[(r * 8)..<(r * 8 + 8)])) == (r != 2 && r != 5))
        }
        #expect(loss.contrast.params.data[2] > 0 && loss.contrast.params.data[3] > 0, "normalisers set")
    }

    @Test func gradientElementIsTheCrossEntropyGradient() {
        let f = randn([5, 6], seed: 38), w = randn([4, 6], seed: 39), b = randn([4], seed: 40)
        let labels = [0, 3, 1, 1, 2]
        f.requiresGrad = true
        f.linear(weight: w, bias: b).crossEntropy(labels: labels).backward()
        let g = gradientElement(feature: f.detached(), weight: w, bias: b, labels: labels)
        #expect(maxDifference(g.scalars, f.grad!.scalars) < 1e-6)
        expectGradients([randn([5, 6], seed: 41), randn([4, 6], seed: 42)]) {
            gradientElement(feature: $0[0], weight: $0[1], bias: nil, labels: labels).squared().sum()
        }
    }

    @Test func weightSchedules() {
        #expect(DistillationWeightSchedule.mimic.weight(step: 0, total: 250) == 1)
        #expect(DistillationWeightSchedule.mimic.weight(step: 239, total: 250) == 1)
        #expect(DistillationWeightSchedule.mimic.weight(step: 240, total: 250) == 0)
        #expect(DistillationWeightSchedule.linearDecay.weight(step: 50, total: 100) == 0.5)
        #expect(DistillationWeightSchedule.constant.weight(step: 99, total: 100) == 1)
    }
}

@Suite struct RRDTests {
    @Test func rrdGradientAndQueue() {
        var generator = SeededGenerator(seed: 51)
        let loss = RRDQueueLoss(studentDimension: 5, teacherDimension: 6, dimension: 4, keys: 8, generator: &generator)
        let initial = loss.queue.copy()
        // Columns of the initial queue are unit vectors.
        for c in 0..<4 {
            let norm: Float = (0..<8).map { initial.data[$0 * 4 + c] * initial.data[$0 * 4 + c] }.reduce(0, +)
            #expect(abs(norm - 1) < 1e-5)
        }
        let ft = randn([4, 6], seed: 52)
        expectGradients([randn([4, 5], seed: 53)]) { inputs in
            loss.queue.assign(initial); loss.queuePointer.value = 0
            return loss(student: inputs[0], teacher: ft)
        }
        loss.queue.assign(initial); loss.queuePointer.value = 0
        _ = loss(student: randn([4, 5], seed: 54), teacher: ft)
        _ = loss(student: randn([4, 5], seed: 55), teacher: ft)
        #expect(loss.queuePointer.value == 0, "two batches of 4 wrap a queue of 8")
        #expect(loss.embedTeacher.weight.grad == nil)
        // A smaller final batch (3 rows at pointer 6) wraps around the end.
        loss.queuePointer.value = 6
        let before = loss.queue.copy()
        _ = loss(student: randn([3, 5], seed: 58), teacher: randn([3, 6], seed: 59))
        #expect(loss.queuePointer.value == 1)
        #expect(Array(loss.queue.scalars[(1 * 4)..<(6 * 4)]) == Array(before.scalars[(1 * 4)..<(6 * 4)]), "rows 1...5 untouched")
        #expect(Array(loss.queue.scalars[0..<4]) != Array(before.scalars[0..<4]), "row 0 written by the wrap")
    }

    @Test func knowledgeDistillationIsTemperatureScaledKL() {
        let s = randn([3, 5], seed: 56), t = randn([3, 5], seed: 57)
        #expect(abs(knowledgeDistillation(student: s, teacher: t, temperature: 4).item
                    - s.klDivergence(target: t, temperature: 4).item) < 1e-7)
    }
}

@Suite struct RRDMemoryTests {
    @Test func gradientAndMemoryUpdate() {
        var generator = SeededGenerator(seed: 61)
        let loss = RRDMemoryLoss(studentDimension: 5, teacherDimension: 6, dimension: 4, dataCount: 12, negatives: 5,
                                 generator: &generator)
        let initial = loss.memory.copy()
        var g = SeededGenerator(seed: 62)
        let indices = [1, 4, 7]
        let contrast = loss.contrastIndices(for: indices, using: &g)
        #expect(contrast.count == 18 && contrast[0] == 1 && contrast[6] == 4)
        let ft = randn([3, 6], seed: 63)
        expectGradients([randn([3, 5], seed: 64)]) { inputs in
            loss.memory.assign(initial)
            return loss(student: inputs[0], teacher: ft, indices: indices, contrastIndices: contrast)
        }
        loss.memory.assign(initial)
        _ = loss(student: randn([3, 5], seed: 65), teacher: ft, indices: indices, contrastIndices: contrast)
        for r in 0..<12 {
            let changed = Array(loss.memory.scalars[(r * 4)..<(r * 4 + 4)]) != Array(initial.scalars[(r * 4)..<(r * 4 + 4)])
            #expect(changed == indices.contains(r))
        }
    }
}
