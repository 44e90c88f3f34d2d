"""The UI plugin: pages over what the edit tasks recorded. Layer 5: it may import every layer below."""
