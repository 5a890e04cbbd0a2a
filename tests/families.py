"""The tiny timm variant of each family the product supports (random weights in tests)."""

FAMILIES = {
    "vit": "vit_tiny_patch16_224",
    "deit": "deit_tiny_patch16_224",
    "swin": "swin_tiny_patch4_window7_224",
    "convnext": "convnext_atto",
    "hiera": "hiera_tiny_224",
    "resnet": "resnet18",
}
