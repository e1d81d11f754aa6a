"""Applications: the live camera app and the accuracy/latency benchmark."""
