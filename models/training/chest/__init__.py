"""The chest X-ray exam's training: pediatric Kermany films, pneumonia vs normal, trained from scratch here."""
