"""Active learning replayed on labeled pools: strategy against strategy (simulate), users inheriting
a base (users), the paper's figure."""
