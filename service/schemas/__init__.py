"""Request and response models: the wire format, checked at the edge."""
