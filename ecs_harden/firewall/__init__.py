"""The firewall: rules as data, the path evaluator, and the backends behind one Protocol."""
