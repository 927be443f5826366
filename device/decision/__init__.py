"""From a model's output to what a clinician is shown, and nothing that runs a model (that is
device/runtime/triager.py, which walks this path for every image).

The path, in order: quality (the image's own checks, before the model: a failed one makes the
result UNGRADABLE, quality.py) -> refusal (the bundle's own checks of whether its model may judge
this image, scores from the same model run: one above its threshold makes the result UNGRADABLE
"This does not look like ...", refusal.py) -> triage (the bundle's policy at the operating point in
use, the bundle's own or the site's accepted one (operating_point.py): URGENT or ROUTINE, and the
result type that holds the UNGRADABLE rule and its reasons, triage.py) -> heatmap (the
class-activation map made viewable, heatmap.py). smoothing.py holds a live source's results
steady over frames."""
