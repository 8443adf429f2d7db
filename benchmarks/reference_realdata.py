"""LoadReference on real people (COCO-WholeBody in ../shared/realdata): face box and "crop person".

    python benchmarks/reference_realdata.py

For every size preset and fit mode it compares the previous rule (BlazeFace on the fitted image,
whole image first, head region only when that finds nothing; "crop person" centred on the person
mask's box) with the current one (`prepare_reference`: faces found on the original photo, chosen by
confidence and agreement with the body's head keypoints; the crop framed on the body keypoints):
- face box IoU against the annotated face boxes (the brow-to-chin box, and the expanded box
  LoadReference outputs), over the faces that stay on the canvas;
- annotated body keypoints that "crop person" cuts off, where the crop could hold the whole person;
- seconds per LoadReference call.
"""
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)
from harness import MEDIAPIPE  # noqa: E402

import numpy as np  # noqa: E402
import reference_realdata as realdata  # noqa: E402

SIZES = ("512x512", "512x768", "768x512", "576x1024", "1024x576", "auto")


def previous_face(picture, size, mode, segmenter, detector):
    from marionette.models.reference import fit_reference, person_box
    from marionette.models.vision.face_detect import face_box_and_mask
    mask = segmenter(picture)
    fitted, t = fit_reference(picture, size, mode, mask=mask)
    h, w = fitted.shape[:2]
    faces = detector.find(fitted, person_box(np.clip(t.warp(mask, (w, h)), 0, 1)))
    return t, (w, h), (faces[0].box if faces else None), face_box_and_mask((w, h), faces).box


def iou(a, b) -> float:
    from marionette.models.vision.face_detect import box_iou
    return 0.0 if a is None else box_iou(a, b)


def main() -> None:
    if not realdata.available():
        sys.exit(f"No real data at {realdata.WHOLEBODY}: it comes with the shared folder next to the repository.")
    from marionette.models.pose.blazepose import BlazePoseEstimator
    from marionette.models.vision.face_detect import FaceDetector
    from marionette.models.vision.segmentation import PersonSegmenter
    segmenter = PersonSegmenter(os.path.join(MEDIAPIPE, "selfie_segmentation.tflite"))
    detector = FaceDetector(os.path.join(MEDIAPIPE, "face_detection_short_range.tflite"))
    estimator = BlazePoseEstimator(MEDIAPIPE, hands=False, face=False)

    def body(picture):
        frame = estimator.frame(picture, track=False)
        return frame.body[0] if frame.num_people else None

    people = realdata.coco_people()
    for whole in (False, True):
        face_table(realdata.coco_people(whole_frames=whole), whole, segmenter, detector, body)
    crop_person_table(people, segmenter, detector, body)


def face_table(people, whole, segmenter, detector, body):
    from marionette.models.reference import FIT_MODES, prepare_reference
    faces = [p for p in people if p.face_box is not None]
    print(f"\nface box IoU vs COCO-WholeBody, {len(faces)} annotated faces, "
          + ("whole photos with one person" if whole else "person crops padded 25 %"))
    print(f"{'size':>9} {'fit':>12} | {'previous: face':>14} {'output':>7} | {'now: face':>9} {'output':>7} | n")
    totals, seconds, spread = {"prev": [], "now": []}, [], []
    for size, mode in itertools.product(SIZES, FIT_MODES):
        rows = {"prev": [], "now": []}
        for person in faces:
            t0 = time.perf_counter()
            ref = prepare_reference(person.picture, size, mode, segmenter, detector, body)
            seconds.append(time.perf_counter() - t0)
            t, canvas, face, out = previous_face(person.picture, size, mode, segmenter, detector)
            truth = realdata.on_canvas(t.apply_box(person.face_box), canvas)
            truth_now = realdata.on_canvas(ref.transform.apply_box(person.face_box), canvas)
            if truth is None or truth_now is None:
                continue   # the crop cuts the face away (the same crop both ways except for "crop person")
            clip = lambda b: None if b is None else np.clip(b, 0, [*canvas, *canvas])  # noqa: E731
            rows["prev"].append((iou(clip(face), truth), iou(out, truth)))
            rows["now"].append((iou(clip(ref.face_box), truth_now), iou(ref.face.box, truth_now)))
            if ref.face_box is not None:
                spread.append((id(person), ref.transform.inverse().apply_box(ref.face_box)))
        for k in rows:
            totals[k] += rows[k]
        p, n = np.array(rows["prev"]), np.array(rows["now"])
        print(f"{size:>9} {mode:>12} | {p[:, 0].mean():14.3f} {p[:, 1].mean():7.3f} | "
              f"{n[:, 0].mean():9.3f} {n[:, 1].mean():7.3f} | {len(n)}")
    p, n = np.array(totals["prev"]), np.array(totals["now"])
    print(f"{'all':>22} | {p[:, 0].mean():14.3f} {p[:, 1].mean():7.3f} | {n[:, 0].mean():9.3f} {n[:, 1].mean():7.3f}"
          f" | {len(n)}   (min now: face {n[:, 0].min():.3f}, output {n[:, 1].min():.3f})")
    worst = 0.0
    for key in {i for i, _ in spread}:
        boxes = np.array([b for i, b in spread if i == key])
        worst = max(worst, float(np.abs(boxes - boxes.mean(0)).max() / (boxes[:, 2] - boxes[:, 0]).mean()))
    print(f"same face in every size/mode: largest box deviation {100 * worst:.1f} % of the face width "
          f"(original photo pixels)")
    print(f"LoadReference (segmentation, body, face candidates, fit): {1000 * np.median(seconds):.0f} ms median "
          f"per call on pictures of ~{int(np.median([p.picture.shape[0] for p in faces]))} px height")


def crop_person_table(people, segmenter, detector, body):
    from marionette.models.reference import fit_reference, prepare_reference

    print(f"\n\"crop person\" on {len(people)} annotated people (≥ {realdata.MIN_KEYPOINTS} keypoints) × "
          f"{len(SIZES)} sizes: annotated keypoints cut off")
    cut = {"prev": 0, "now": 0}
    fits = people_cut = 0
    for person, size in itertools.product(people, SIZES):
        points = person.keypoints[person.keypoints[:, 2] > 0, :2]
        image_size = (person.picture.shape[1], person.picture.shape[0])
        if not realdata.window_holds(points, image_size, _target(size, image_size)):
            continue
        fits += 1
        mask = segmenter(person.picture)
        _, t_prev = fit_reference(person.picture, size, "crop person", mask=mask)
        ref = prepare_reference(person.picture, size, "crop person", segmenter, detector, body)
        w, h = ref.image.shape[1], ref.image.shape[0]
        for key, t in (("prev", t_prev), ("now", ref.transform)):
            xy = t.apply(points)
            off = int((~((xy[:, 0] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] >= 0) & (xy[:, 1] <= h))).sum())
            cut[key] += off
            people_cut += key == "now" and off > 0
    print(f"where the crop can hold the whole person ({fits} cases): previous {cut['prev']} keypoints cut, "
          f"now {cut['now']} ({people_cut} cases still cut)")


def _target(size, image_size):
    from marionette.models.reference import target_size
    return target_size(size, image_size)


if __name__ == "__main__":
    main()
