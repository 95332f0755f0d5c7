"""The page's sections, top to bottom in the order of the work; each has `layout(ctx)` and `wire(ctx)`."""
