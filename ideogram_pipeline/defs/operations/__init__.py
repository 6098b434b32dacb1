"""Operations on stored images (issue 19): the ``apply_operation`` job."""
