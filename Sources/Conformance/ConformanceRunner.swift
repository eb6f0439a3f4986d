import Foundation

/// The outcome of one fixture case.
public struct CaseResult: Sendable {
    public let file: String
    public let name: String
    public let kind: String
    public let comparisons: [Comparison]
    /// Set when the case could not run (unknown kind, malformed file, missing tensor).
    public let failure: String?

    public var passed: Bool { failure == nil && !comparisons.isEmpty && comparisons.allSatisfy(\.passed) }
    /// The comparison closest to (or furthest beyond) its bound.
    public var worst: Comparison? { comparisons.max { $0.ratio < $1.ratio } }

    /// One line: name, PASS/FAIL, worst error against the bound.
    public var line: String {
        let status = passed ? "PASS" : "FAIL"
        let detail: String
        if let failure {
            detail = failure
        } else if let w = worst {
            if let mismatch = w.shapeMismatch {
                detail = "\(w.name): \(mismatch)"
            } else {
                detail = String(format: "worst %@: error %.3g, bound %.3g (%.3f of bound)", w.name, w.error, w.bound, w.ratio)
            }
        } else {
            detail = "nothing compared"
        }
        return "\(name.padding(toLength: max(name.count, 28), withPad: " ", startingAt: 0)) \(status)  \(detail)"
    }
}

/// Runs reference fixtures, dispatching on `kind`.
public struct ConformanceRunner {
    public typealias CaseFunction = (Fixture) throws -> [Comparison]

    /// Runners by kind. A kind not listed here fails.
    public var kinds: [String: CaseFunction]

    /// The runner for every kind the engine implements.
    public init() {
        kinds = [
            "conv2d": EngineCases.conv2d,
            "batchnorm2d_train": EngineCases.batchNormTrain,
            "pool_linear_cross_entropy": EngineCases.poolLinearCrossEntropy,
            "sgd_nesterov": EngineCases.sgd,
            "resnet_train_step": EngineCases.resnetTrainStep,
            "mcl_supmcl": LossCases.supMCL,
            "mcl_with_heads": LossCases.withHeads,
            "mcl_logit_ensemble_kd": LossCases.ensembleKD,
            "rrd_fifo": LossCases.rrdFIFO,
            "crcd_feature_relation": LossCases.crcdFeature,
            "crcd_gradient_relation": LossCases.crcdGradient,
        ]
    }

    /// Every `.json` file under `directory` (recursively), sorted by path.
    public static func fixtureFiles(in directory: URL) throws -> [URL] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FixtureError.malformed(file: directory.path, reason: "no such directory")
        }
        guard let walker = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil) else { return [] }
        return walker.compactMap { $0 as? URL }.filter { $0.pathExtension == "json" }.sorted { $0.path < $1.path }
    }

    /// Runs one fixture file.
    public func run(file: URL) -> CaseResult {
        let fixture: Fixture
        do {
            fixture = try Fixture.load(file)
        } catch {
            return CaseResult(file: file.path, name: file.deletingPathExtension().lastPathComponent, kind: "?",
                              comparisons: [], failure: "\(error)")
        }
        guard let function = kinds[fixture.kind] else {
            return CaseResult(file: file.path, name: fixture.case, kind: fixture.kind, comparisons: [],
                              failure: "\(FixtureError.unknownKind(fixture.kind))")
        }
        do {
            return CaseResult(file: file.path, name: fixture.case, kind: fixture.kind, comparisons: try function(fixture),
                              failure: nil)
        } catch {
            return CaseResult(file: file.path, name: fixture.case, kind: fixture.kind, comparisons: [], failure: "\(error)")
        }
    }
}
