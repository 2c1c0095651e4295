"""Memory planning: the peak memory a recipe's training needs, before it runs (`csm-adapt memory`).

`params` counts weights, gradients and optimizer states exactly on the meta device, `activations`
models what each layer saves for the backward pass, `plan` walks two optimizer steps into a peak and
its split, `advice` picks the change that makes a recipe fit a card, and `measure` trains real steps
to check the plan against the allocator.

May import: the model, data (batch layout), config, training (its step, optimizer and adapter code,
so that what is planned and measured is what trains) and the foundation modules; never commands.
"""
