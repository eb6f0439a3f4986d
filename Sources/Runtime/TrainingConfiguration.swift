import Foundation
import Yams
import Training

/// The settings of `cohort train --config FILE`: one network trained alone, configured with the keys a
/// cohort uses for the same things.
public struct TrainingConfiguration: Sendable {
    public var options: TrainingOptions
    /// The file's `output`, when it names one.
    public var output: String?

    /// Reads `path`: either a single network's file (`model:` and the keys every configuration shares —
    /// data, seed, epochs, batch_size, sampler, optimizer, schedule, evaluation_batch_size,
    /// evaluation_every, checkpoint_every, output), or a cohort's file, of which peer `rank`'s network is
    /// trained alone with the cohort's settings (its baseline; `rank` may be left out with one peer).
    /// - Throws: ``ConfigurationError`` naming the key, or the missing rank.
    public static func load(path: String, rank: Int?) throws -> TrainingConfiguration {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigurationError.unreadable(path: path, reason: error.localizedDescription)
        }
        let keys = try ConfigurationNode.parse(text).topLevelKeys
        let isCohort = !describesOneNetwork(topLevelKeys: keys)
        let configuration = try CohortConfiguration.parse(text, singleNetwork: !isCohort)
        var options = configuration.trainingOptions
        if isCohort {
            let count = configuration.peers.count
            guard let rank = rank ?? (count == 1 ? 0 : nil) else {
                throw ConfigurationError.missing(path: "--rank", expected: "the peer whose network to train alone: 0...\(count - 1) (the file is a cohort of \(count))")
            }
            guard configuration.peers.indices.contains(rank) else {
                throw ConfigurationError.badValue(path: "--rank", expected: "a rank of the file's \(count) peer(s), 0...\(count - 1)", found: "\(rank)")
            }
            options.model = configuration.peers[rank].model
        } else if let rank {
            throw ConfigurationError.badValue(path: "--rank", expected: "nothing: the file describes one network (model)", found: "\(rank)")
        }
        return TrainingConfiguration(options: options, output: keys.contains("output") ? configuration.output : nil)
    }
}

extension TrainingConfiguration {
    /// Whether YAML `text` describes one network (`model:`, no `peers:`) rather than a cohort.
    public static func describesOneNetwork(_ text: String) throws -> Bool {
        describesOneNetwork(topLevelKeys: try ConfigurationNode.parse(text).topLevelKeys)
    }

    static func describesOneNetwork(topLevelKeys keys: [String]) -> Bool { keys.contains("model") && !keys.contains("peers") }
}

extension ConfigurationNode {
    /// The keys of a mapping (none for anything else).
    var topLevelKeys: [String] {
        guard case .mapping(let m) = node else { return [] }
        return m.keys.compactMap(\.string)
    }
}
