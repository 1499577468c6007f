"""Entity paths of a LASER recording and the default blueprint that arranges them.

World axes are those of the first camera (OpenCV: x right, y down, z forward), hence ``RDF``.
"""

from __future__ import annotations

WORLD = "world"
CAMERA = "world/camera"
"""Transform3D (camera-to-world) and Pinhole (intrinsics, RDF camera axes), logged per frame."""
RGB = "world/camera/rgb"
DEPTH = "world/camera/depth"
CONFIDENCE = "world/camera/confidence"
LAYERS = "world/camera/layers"
"""SegmentationImage of depth layers; its AnnotationContext labels carry each layer's scale."""
POINTS = "world/points"
"""This frame's world points (downsampled): the 4D view when scrubbing the timeline."""
MAP = "world/map"
"""Bounded global map, static, replaced periodically."""
TRAJECTORY = "world/trajectory"
"""Camera centres so far, as one line strip."""

METRICS = "metrics"
SCALE = "metrics/scale"
DEPTH_RESIDUAL = "metrics/residual/depth"
POSE_RESIDUAL = "metrics/residual/pose"
NUM_LAYERS = "metrics/layers/count"
LAYER_SPREAD = "metrics/layers/scale_spread"
FPS = "metrics/fps"

SERIES_NAMES = {
    SCALE: "window Sim(3) scale",
    DEPTH_RESIDUAL: "depth residual (relative)",
    POSE_RESIDUAL: "pose residual (relative)",
    NUM_LAYERS: "layers per frame",
    LAYER_SPREAD: "std of log layer scales",
    FPS: "frames/s",
}

FRAME_TIMELINE = "frame"
VIDEO_TIMELINE = "video_time"


def default_blueprint():
    """3D view of the world on the left; camera images over time series on the right."""
    import rerun.blueprint as rrb

    def image_view(name: str, *paths: str) -> rrb.Spatial2DView:
        return rrb.Spatial2DView(name=name, origin=CAMERA, contents=[f"+ /{p}" for p in paths])

    world = rrb.Spatial3DView(
        name="World",
        origin=WORLD,
        # The depth image would back-project into a second, depth-coloured cloud, and the
        # confidence/layer images would stack on the image plane: the RGB frustum is enough.
        contents=["+ $origin/**", f"- /{DEPTH}", f"- /{CONFIDENCE}", f"- /{LAYERS}"],
    )
    images = rrb.Grid(
        image_view("RGB", RGB),
        image_view("Depth", DEPTH),
        image_view("Confidence", CONFIDENCE),
        image_view("Depth layers (scale per layer)", RGB, LAYERS),
        grid_columns=2,
    )
    series = rrb.Tabs(
        rrb.TimeSeriesView(name="Scale", origin=SCALE),
        rrb.TimeSeriesView(name="Residuals", origin="metrics/residual"),
        rrb.TimeSeriesView(name="Layers", origin="metrics/layers"),
        rrb.TimeSeriesView(name="Frames/s", origin=FPS),
    )
    return rrb.Blueprint(
        rrb.Horizontal(
            world, rrb.Vertical(images, series, row_shares=[3, 2]), column_shares=[3, 2]
        ),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
    )
