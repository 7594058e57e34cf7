"""Networks: the ConvNeXt backbone, the projection head, and weight import."""
