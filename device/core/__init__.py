"""What every room of the appliance above it stands on, and no room's own work: the settings
(settings/), errors with their HTTP status, the study store (store/), the study service
(study_service.py), the exams and the serving of each exam's model (exams.py, serving.py), and what a
study needs besides: its result, decoding slots, renderings, the free-space reserve, media,
exports and the Prometheus metrics."""
