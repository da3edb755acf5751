"""The ready circuits, shipped as package data: ``babybear fit news`` finds circuits/news.yaml by name."""
