import Foundation
import Testing
import Training
import Wire
@testable import Runtime

/// The teacher computed ahead on its own thread gives exactly the outputs computed in line, step after
/// step and across jumps in the schedule (a step run again, a resume further on).
@Suite struct TeacherPipelineTests {
    @Test func outputsComputedAheadAreThoseComputedInLine() throws {
        var options = TrainingOptions()
        options.model = "resnet8"; options.epochs = 1; options.batchSize = 64; options.trainLimit = 128; options.testLimit = 10
        let teacherDirectory = scratch("pipeline-teacher")
        _ = try Trainer(options: options, outputDirectory: teacherDirectory).run(resume: false, progress: ProgressReporter(interactive: false))
        let configuration = try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 96, test_limit: 10}
            epochs: 3
            batch_size: 32
            peers: [{model: resnet8}]
            teacher: {model: resnet8, checkpoint: \(teacherDirectory)/checkpoints/last.safetensors, kd: {}}
            output: \(scratch("pipeline-run"))
            """)
        let data = try CohortData.loading(configuration: configuration) { _ in }
        let inline = try TeacherRunner(settings: configuration.teacher!, dataSet: configuration.data.dataSet)
        let pipeline = TeacherPipeline(settings: configuration.teacher!, data: data, epochs: 3, depth: 2)
        defer { pipeline.stop() }
        let spe = data.stepsPerEpoch
        #expect(spe == 3)
        // In order, a step again (nobody delivered), back (a resume at an older checkpoint), ahead, to the end.
        for g in [0, 1, 2, 3, 3, 1, 2, 7, 8] {
            let step = Message.Step(epoch: g / spe, step: g % spe, globalStep: g)
            let ahead = pipeline.outputs(for: step)
            let batch = data.loader(epoch: step.epoch, startStep: step.step).next()!
            let t = inline.outputs(for: batch)
            #expect(ahead.step == step && ahead.batchSize == batch.size)
            #expect(ahead.tensors.map(\.name) == ["feature", "logits", "gradient_element"])
            #expect(ahead.tensors[0].values == t.feature && ahead.tensors[1].values == t.logits && ahead.tensors[2].values == t.gradientElement,
                    "step \(g)")
        }
    }
}
