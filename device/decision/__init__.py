"""From a model's output to what a clinician is shown, and nothing that runs a model: the image
quality gates that make a result UNGRADABLE (quality), the bundle's triage policy and the result
type (triage), and the class-activation map made viewable (heatmap)."""
