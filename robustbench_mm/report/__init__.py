"""Reports built from result stores: leaderboard tables, the static page, plots, paper tables."""
