"""The console example of the README's "In 3D Slicer" section, as a function the tests run.

In Slicer's Python console the logic is the module's:

    import MemorizationIndex
    logic = MemorizationIndex.MemorizationIndexLogic()     # works on slicer.mrmlScene
    result = consoleExample(logic, "/data/train", "/data/bank", slicer.util.getNode("synth-01"))

Outside Slicer (here, in CI) the same calls run on a slicer-core scene:

    .venv/bin/python Testing/slicer/console_example.py TRAIN_FOLDER BANK_FOLDER SYNTHETIC.nii.gz
"""

from __future__ import annotations

import sys
from pathlib import Path


def consoleExample(logic, trainingFolder, bankFolder, syntheticVolume, **bankOptions):
    """Build a bank, score a volume node, and put its worst slice over its training match."""
    # 1. Encode the training scans into a feature bank (once; later: logic.loadBank(bankFolder)).
    logic.buildBank(trainingFolder, bankFolder, **bankOptions)
    print(logic.bankDescription())

    # 2. Score a synthetic volume node. This fills the table node "MemorizationIndex slices"
    #    and the plot chart "MemorizationIndex MI along slices", and returns the ScoreResult.
    result = logic.scoreVolume(syntheticVolume)
    verdict = logic.volumeSummary()
    print(
        f"{verdict['volume']}: {verdict['verdict']}, volume MI {verdict['mi']:.6f}, "
        f"ONI {verdict['oni']:+.3f}, {100 * verdict['fractionFlagged']:.0f} % of slices flagged, "
        f"best match {verdict['matchVolume']}"
    )

    # 3. The suspected copies, most suspicious first (indices into result.slices).
    suspects = logic.suspectedCopies()
    for i in suspects[:5]:
        row = result.slices[i]
        print(
            f"  slice {row['slice_index']}: MI {row['mi']:.6f} -> {row['match_volume']} "
            f"slice {row['match_slice']} (view {row['transform']})"
        )

    # 4. Show the worst one: the Red view blends the synthetic slice with its nearest
    #    training slice, placed on it by a transform node; every view jumps to it.
    if suspects:
        logic.showMatch(suspects[0], opacity=0.5)
        logic.setOverlayOpacity(1.0)  # fade to the training slice (0 = synthetic only)
    return result


def main(argv):
    """Run the example on a fresh slicer-core scene (outside Slicer)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MemorizationIndex"))
    from MemorizationIndexSlicer.headless import createSceneWithSliceViews
    from MemorizationIndexSlicer.logic import MemorizationIndexSceneLogic

    trainingFolder, bankFolder, syntheticFile = argv
    scene, appLogic = createSceneWithSliceViews()
    logic = MemorizationIndexSceneLogic(scene, appLogic)
    synthetic = logic.loadVolumeFromSource(syntheticFile, role="synthetic")
    consoleExample(logic, trainingFolder, bankFolder, synthetic)


if __name__ == "__main__":
    main(sys.argv[1:])
