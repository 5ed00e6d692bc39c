import Type from 'typebox';

export const ModelObject = Type.Object(
  { id: Type.String(), object: Type.Literal('model'), created: Type.Integer(), owned_by: Type.String() },
  { $id: 'Model' },
);

export const ModelList = Type.Object(
  { object: Type.Literal('list'), data: Type.Array(Type.Ref('Model')) },
  { $id: 'ModelList' },
);
